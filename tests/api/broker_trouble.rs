//! The broker on a bad day: it cannot be reached (and no password is printed while it is
//! not), it refuses one event forever (the event is named and the ones after it wait), it
//! stops answering mid-conversation (shutdown stays bounded, a second signal ends it now).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::broker::*;
use crate::helpers::*;

// ---------------------------------------------------------------------------------------
// Secrets never printed
// ---------------------------------------------------------------------------------------

/// A password no test output would contain by chance.
const CANARY: &str = "canary-pw-5f0c2e91";

/// A host name that fails inside the resolver: a label over 63 bytes cannot be put in a
/// DNS query, so no query leaves the machine.
fn unresolvable_host() -> String {
    format!("{}.invalid", "x".repeat(70))
}

#[track_caller]
fn assert_no_canary(what: &str, text: &str) {
    assert!(
        !text.contains(CANARY),
        "{what} shows the password:\n{}",
        text.lines()
            .filter(|l| l.contains(CANARY))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs the binary with `env` (and every log line on), in `dir`; stdout and stderr together.
fn run_cli(dir: &Path, env: &[(&str, String)], args: &[&str]) -> String {
    let Output { stdout, stderr, .. } = clean_command(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "trace")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run order-service {args:?}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    )
}

/// A service whose broker password and product-service credentials are the canary, with
/// every log line on; one order waits in the outbox, so the relay keeps trying the broker,
/// and one order failed on the product service, so its error is logged.
fn app_with_canary(host: &str, port: u16) -> TestApp {
    let products = ProductStandIn::with_default_catalog();
    let product_url = products
        .url()
        .replace("http://", &format!("http://shop:{CANARY}@"));
    let app = TestApp::builder()
        .products(products)
        .env("PRODUCT_SERVICE_URL", &product_url)
        .env("RABBITMQ_HOST", host)
        .env("RABBITMQ_PORT", &port.to_string())
        .env("RABBITMQ_PASSWORD", CANARY)
        .env("RUST_LOG", "trace")
        .spawn();
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);
    app.products.set(CABLE, Behaviour::Status(500));
    app.create_order(&ALICE, &items(&[(CABLE, 1)]))
        .assert_error(503, "product_service_unavailable");
    app
}

/// Everything the service and its commands print, with the broker unreachable (nothing
/// listens), unresolvable, or refusing the password: no line holds the password.
#[test]
fn no_log_line_or_command_output_shows_a_password() {
    let mut brokers = vec![("127.0.0.1".to_string(), 1, "connect to 127.0.0.1:1")];
    brokers.push((unresolvable_host(), BROKER_PORT, "connect to xxxx"));
    if require_broker() {
        // The real broker, which refuses the canary password.
        brokers.push((
            BROKER_HOST.to_string(),
            BROKER_PORT,
            "connect to 127.0.0.1:5672",
        ));
    }
    for (host, port, failure) in brokers {
        let app = app_with_canary(&host, port);
        assert!(
            wait_until(Duration::from_secs(10), || app
                .stderr()
                .contains("broker unavailable")),
            "the relay did not report the broker unavailable ({host}:{port}):\n{}",
            app.stderr()
        );
        // A few more tries, each of them logged at debug or trace.
        std::thread::sleep(Duration::from_millis(800));
        let stderr = app.stderr();
        assert_no_canary(&format!("the service's log ({host}:{port})"), &stderr);
        assert!(
            stderr.contains(failure),
            "the log names the broker it tried ({failure}):\n{stderr}"
        );
        assert!(
            stderr.contains("GET http://***@127.0.0.1:"),
            "the product-service failure is logged with its URL, credentials hidden:\n{stderr}"
        );
        assert_no_canary("GET /ready", &app.ready().body);
        assert_no_canary("GET /metrics", &app.metrics().body);

        let dir = TempDir::new();
        let env = [
            ("DATABASE_URL", app.db_path.display().to_string()),
            ("RABBITMQ_HOST", host.clone()),
            ("RABBITMQ_PORT", port.to_string()),
            ("RABBITMQ_PASSWORD", CANARY.to_string()),
            ("STORE_ID", "test-store".to_string()),
        ];
        let peek = run_cli(dir.path(), &env, &["queue", "peek"]);
        assert!(
            peek.contains(failure),
            "queue peek says why it failed ({failure}):\n{peek}"
        );
        assert_no_canary("queue peek", &peek);
        for args in [
            &["outbox", "status"][..],
            &["migrate"],
            &["--help"],
            &["queue", "peek", "x"],
        ] {
            assert_no_canary(&format!("{args:?}"), &run_cli(dir.path(), &env, args));
        }
    }
}
