//! Receivers with a behaviour several tests share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Receiver, Reply};

/// A receiver that answers 500 until `healthy` is set, and 200 from then on: an endpoint that
/// recovers when the test says so.
pub async fn failing_until(healthy: Arc<AtomicBool>) -> Receiver {
    Receiver::start(move |_, _| {
        Reply::status(if healthy.load(Ordering::SeqCst) {
            200
        } else {
            500
        })
    })
    .await
}
