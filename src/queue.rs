//! `order-service queue peek`: shows the events waiting in the broker's queue without
//! taking them away, so an operator can see what the central systems will receive.

use crate::config::RabbitConfig;

/// Prints up to `max` messages of the queue, oldest first, and puts them back. A queue
/// that is not there is not made (a mistyped name would leave one behind), and one with
/// a consumer is left alone: the messages held for the peek would reach it after the
/// ones behind them.
pub fn peek(rabbit: &RabbitConfig, max: usize) -> Result<usize, String> {
    let (connection, channel) = crate::relay::connect_channel(rabbit)?;
    let queue = channel
        .queue_declare_passive(rabbit.queue.as_str())
        .map_err(|e| format!("look up queue {}: {e}", rabbit.queue))?;
    if let Some(consumers) = queue.declared_consumer_count().filter(|n| *n > 0) {
        let _ = connection.close();
        return Err(format!(
            "queue {} has {consumers} consumer(s): a peek would hold messages back from them \
             and let later ones overtake them",
            rabbit.queue
        ));
    }
    println!(
        "queue {}: {} message(s)",
        rabbit.queue,
        queue.declared_message_count().unwrap_or(0)
    );
    let mut shown = 0;
    while shown < max {
        let Some(get) = queue.get(false).map_err(|e| format!("get: {e}"))? else {
            break;
        };
        let p = &get.delivery.properties;
        println!(
            "message_id={} type={} {}",
            p.message_id().as_deref().unwrap_or("-"),
            p.type_().as_deref().unwrap_or("-"),
            String::from_utf8_lossy(&get.delivery.body)
        );
        shown += 1;
    }
    // Unacknowledged messages return to the queue, in order, when the channel closes.
    channel.close().map_err(|e| format!("close: {e}"))?;
    let _ = connection.close();
    Ok(shown)
}
