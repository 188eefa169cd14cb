//! `order-service queue peek`: shows the events waiting in the broker's queue without
//! taking them away, so an operator can see what the central systems will receive.

use crate::config::RabbitConfig;

/// Prints up to `max` messages of the queue, oldest first, and puts them back.
pub fn peek(rabbit: &RabbitConfig, max: usize) -> Result<usize, String> {
    let (connection, channel) = crate::relay::open_channel(rabbit)?;
    let queue = channel
        .queue_declare_passive(rabbit.queue.as_str())
        .map_err(|e| format!("look up queue {}: {e}", rabbit.queue))?;
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
