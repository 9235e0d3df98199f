//! What an attempt's outcome does beyond the delivery: metrics, operational events, and
//! disabling the endpoint. Split from the actor so its file stays about scheduling.

use std::time::Duration;

use serde_json::json;

use super::EndpointState;
use crate::delivery::{Status, now_rfc3339};
use crate::endpoint::Endpoint;
use crate::store::record::AttemptRecord;

impl EndpointState {
    /// Emits an operational event into the endpoint's workspace, where a rule may forward it
    /// (to Slack, say). In a task: the actor does not wait for the rules or the store.
    /// The body is serialised from the catalogue's models (`EndpointFailing` when `health` is
    /// given, else `EndpointDisabled`), so `GET /v1/event-types` describes what is sent.
    pub(super) fn emit(
        &self,
        event_type: &'static str,
        ep: &Endpoint,
        reason: &str,
        health: Option<crate::endpoint::health::HealthView>,
    ) {
        use crate::event::catalogue::{EndpointDisabled, EndpointFailing, EndpointRef};
        let (ctx, ws_id) = (self.ctx.clone(), self.key.0.clone());
        let endpoint = EndpointRef {
            id: ep.id.clone(),
            url: ep.spec.url.clone(),
            description: ep.spec.description.clone(),
        };
        let (reason, at) = (reason.to_string(), now_rfc3339());
        let fields = match health {
            Some(health) => serde_json::to_value(EndpointFailing {
                endpoint,
                reason,
                at,
                health,
            }),
            None => serde_json::to_value(EndpointDisabled {
                endpoint,
                reason,
                at,
            }),
        }
        .unwrap_or_default();
        let mut body = json!({"event": event_type});
        if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), fields) {
            b.extend(extra);
        }
        tokio::spawn(async move {
            let serde_json::Value::Object(body) = body else {
                return;
            };
            let event = crate::event::Event {
                event_type: event_type.to_string(),
                body,
            };
            let emitted = async {
                let Some(ws) = ctx.store.workspace(&ws_id).await? else {
                    return Ok(());
                };
                let snapshot = ctx.rules.get(&ctx.store, &ws_id).await?;
                let fired = snapshot.rules.matching(event_type, &event.body);
                crate::ingest::ingest(
                    &ctx.store,
                    &ctx.rules,
                    &snapshot,
                    &ws,
                    vec![crate::ingest::Fired {
                        event: &event,
                        rules: fired,
                    }],
                    None,
                )
                .await
                .map(drop)
            };
            if let Err(e) = emitted.await {
                tracing::warn!(event = event_type, error = %e, "cannot emit an operational event");
            }
        });
    }

    /// Counts an attempt (and a final outcome) in the node's metrics, and logs a failed one at
    /// `warn` with the ids an operator searches by (a TLS or connect error names the endpoint
    /// here, not only inside the attempt's span).
    pub(super) fn observe(&self, a: &AttemptRecord, status: Status) {
        if !a.succeeded() {
            let (kind, message) = a.error().unwrap_or(("status", ""));
            tracing::warn!(
                workspace = %self.key.0,
                endpoint = %self.key.1,
                attempt = a.n,
                status = a.st,
                kind,
                error = message,
                next = status.as_str(),
                "attempt failed"
            );
        }
        let kind = a.error().map(|(k, _)| k);
        let class = crate::telemetry::status_class(a.st, kind);
        let node = &self.ctx.node;
        crate::telemetry::attempt(node, status.as_str(), class, Duration::from_millis(a.d));
        if kind == Some("ssrf") {
            crate::telemetry::ssrf_refused(node, "connect");
        }
    }

    /// Stops sending until an operator re-enables the endpoint; its queue is kept.
    pub(super) async fn disable(&mut self, ep: std::sync::Arc<Endpoint>, reason: &str) {
        let mut ep = (*ep).clone();
        ep.spec.enabled = false;
        ep.updated_at = now_rfc3339();
        match self.ctx.store.put_endpoint(&self.key.0, &ep).await {
            Ok(()) => {
                tracing::warn!(endpoint = %ep.id, reason, "endpoint disabled");
                self.emit("switchyard:endpoint_disabled", &ep, reason, None);
                self.endpoint = Some(std::sync::Arc::new(ep));
            }
            Err(e) => tracing::error!(endpoint = %ep.id, error = %e, "cannot disable endpoint"),
        }
    }
}
