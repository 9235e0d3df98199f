//! Log lines and trace export: the `tracing` subscriber a node runs with.
//!
//! Logs go to standard output as text or JSON (`log_format`). With the `otlp` cargo feature
//! and an `otlp_endpoint`, the same spans (one `attempt` span per delivery attempt, one
//! `ingest` span per event request) are also exported over OTLP/HTTP (protobuf) to a
//! collector, batched on the SDK's own thread so a slow or absent collector never holds up a
//! delivery. The feature is off by default because it adds the OpenTelemetry SDK to the build;
//! a config that names an endpoint on a build without it is refused at start, naming
//! `otlp_endpoint`, rather than silently exporting nothing.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Flushes and stops the trace exporter when dropped (at the end of `serve`), so the spans of
/// the last attempts before a graceful shutdown still reach the collector.
pub struct TraceGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("switchyard: flushing traces to the OTLP collector failed: {e}");
        }
    }
}

/// Installs the process-wide subscriber: the log layer, and the OTLP layer when configured.
pub fn init(config: &Config) -> anyhow::Result<TraceGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,switchyard=info".into());
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        // Colour codes only on a terminal: in a file or a pipe they are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };
    let layers = vec![logs.with_filter(filter).boxed()];
    #[cfg(feature = "otlp")]
    let (layers, provider) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (layer, provider) = otlp::layer(endpoint, &config.node_id)?;
            let layers: Vec<_> = layers.into_iter().chain([layer]).collect();
            (layers, Some(provider))
        }
        None => (layers, None),
    };
    tracing_subscriber::registry().with(layers).try_init()?;
    Ok(TraceGuard {
        #[cfg(feature = "otlp")]
        provider,
    })
}

#[cfg(feature = "otlp")]
mod otlp {
    use anyhow::Context;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::Registry;

    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

    /// An OTLP/HTTP exporter to `{endpoint}/v1/traces` and the layer that feeds it the spans of
    /// this crate only (not every redis or hyper internal span).
    pub(super) fn layer(endpoint: &str, node: &str) -> anyhow::Result<(Boxed, SdkTracerProvider)> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .context("cannot build the OTLP exporter (otlp_endpoint)")?;
        let resource = Resource::builder()
            .with_service_name("switchyard")
            .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("switchyard");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("switchyard", tracing::Level::INFO))
            .boxed();
        Ok((layer, provider))
    }
}
