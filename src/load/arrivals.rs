//! Where a run's arrivals come from: the built-in receiver's memory, or the control API of
//! receivers running elsewhere (`switchyard receiver`, read with `GET
//! /_switchyard/arrivals?after=N`). Either way the engine gets the same [`Arrival`]s and
//! measures them with the same code; a remote receiver's arrivals that came before the run
//! started are skipped, so a receiver can serve one run after another without a reset.

use std::collections::HashSet;

use super::receiver::{Arrival, ArrivalsPage, Receiver};

/// Why a remote receiver could not be read.
#[derive(Debug, thiserror::Error)]
#[error("receiver {url}: {why}")]
pub struct ReceiverUnreachable {
    pub url: String,
    pub why: String,
}

/// One receiver elsewhere, and how far it has been read.
pub(super) struct Remote {
    base: String,
    next: usize,
}

/// The receivers a run delivers to.
pub(super) enum Source {
    Local {
        receiver: Receiver,
        next: usize,
    },
    Remote {
        http: reqwest::Client,
        token: Option<String>,
        receivers: Vec<Remote>,
    },
}

/// Everything that arrived so far, and the distinct deliveries among it that arrived
/// answered 200, counted as new arrivals come in.
#[derive(Default)]
pub(super) struct Collected {
    pub arrivals: Vec<Arrival>,
    checked: usize,
    seen: HashSet<String>,
}

impl Collected {
    fn add(&mut self, arrival: Arrival) {
        self.arrivals.push(arrival);
    }

    /// How many distinct deliveries for which `wanted` holds arrived answered 200; only the
    /// arrivals since the last call are looked at.
    pub fn delivered(&mut self, wanted: impl Fn(&str) -> bool) -> usize {
        for a in &self.arrivals[self.checked..] {
            if a.status == 200 && wanted(&a.id) && !self.seen.contains(&a.id) {
                self.seen.insert(a.id.clone());
            }
        }
        self.checked = self.arrivals.len();
        self.seen.len()
    }

    /// Forgets the count, so the next [`Collected::delivered`] counts anew (another `wanted`).
    pub fn recount(&mut self) {
        self.checked = 0;
        self.seen.clear();
    }
}

impl Source {
    pub fn local(receiver: Receiver) -> Source {
        Source::Local { receiver, next: 0 }
    }

    /// Receivers at these base URLs, read from what arrives after now.
    /// `ca`: a PEM file of roots to trust besides the system's (the receivers' `--ca-out`).
    pub async fn remote(
        bases: &[String],
        token: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> Result<Source, ReceiverUnreachable> {
        let fail = |why: String| ReceiverUnreachable {
            url: bases.join(", "),
            why,
        };
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| fail(format!("--receiver-ca {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(format!("--receiver-ca {}: {e}", ca.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| fail(e.to_string()))?;
        let mut receivers = Vec::new();
        for base in bases {
            let base = base.trim_end_matches('/').to_string();
            // The first page says how many arrived before the run: those are not its own.
            let page = page(&http, &base, token.as_deref(), usize::MAX >> 1, 1).await?;
            receivers.push(Remote {
                base,
                next: page.total,
            });
        }
        Ok(Source::Remote {
            http,
            token,
            receivers,
        })
    }

    /// The base URLs endpoints are spread over (`{base}/ep/{i}`).
    pub fn bases(&self) -> Vec<String> {
        match self {
            Source::Local { receiver, .. } => vec![receiver.base()],
            Source::Remote { receivers, .. } => receivers.iter().map(|r| r.base.clone()).collect(),
        }
    }

    /// The built-in receiver, if the run uses it.
    pub fn local_receiver(&self) -> Option<&Receiver> {
        match self {
            Source::Local { receiver, .. } => Some(receiver),
            Source::Remote { .. } => None,
        }
    }

    /// Reads what arrived since the last poll into `into`. A remote receiver that cannot be
    /// read is tried again at the next poll; its error is returned after the others are read.
    pub async fn poll(&mut self, into: &mut Collected) -> Result<(), ReceiverUnreachable> {
        match self {
            Source::Local { receiver, next } => {
                let fresh: Vec<Arrival> =
                    receiver.with_received(|r| r[*next..].iter().map(Arrival::from).collect());
                *next += fresh.len();
                fresh.into_iter().for_each(|a| into.add(a));
                Ok(())
            }
            Source::Remote {
                http,
                token,
                receivers,
            } => {
                let mut failed = None;
                for r in receivers.iter_mut() {
                    if let Err(e) = drain(http, token.as_deref(), r, into).await {
                        failed = Some(e);
                    }
                }
                failed.map_or(Ok(()), Err)
            }
        }
    }
}

/// Reads a remote receiver's new arrivals, page by page.
async fn drain(
    http: &reqwest::Client,
    token: Option<&str>,
    r: &mut Remote,
    into: &mut Collected,
) -> Result<(), ReceiverUnreachable> {
    loop {
        let page = page(http, &r.base, token, r.next, super::receiver::control::PAGE).await?;
        if page.total < r.next {
            // The receiver was reset: what it holds now is all new.
            r.next = 0;
            continue;
        }
        let got = page.arrivals.len();
        r.next = page.next;
        page.arrivals.into_iter().for_each(|a| into.add(a));
        if got == 0 || r.next >= page.total {
            return Ok(());
        }
    }
}

async fn page(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    after: usize,
    limit: usize,
) -> Result<ArrivalsPage, ReceiverUnreachable> {
    let fail = |why: String| ReceiverUnreachable {
        url: base.to_string(),
        why,
    };
    let mut req = http.get(format!(
        "{base}/_switchyard/arrivals?after={after}&limit={limit}"
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| {
        // reqwest's Display stops at the outermost error; the cause (TLS, refused) is below.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why = format!("{why}: {cause}");
            source = cause.source();
        }
        let hint = if base.starts_with("https") {
            " (a receiver's own CA is trusted with --receiver-ca FILE, its --ca-out)"
        } else {
            ""
        };
        fail(format!("cannot read its control API: {why}{hint}"))
    })?;
    match resp.status().as_u16() {
        200 => resp
            .json::<ArrivalsPage>()
            .await
            .map_err(|e| fail(format!("not a switchyard receiver's answer: {e}"))),
        401 => Err(fail(
            "the control API refused the token (--receiver-token)".into(),
        )),
        status => Err(fail(format!(
            "GET /_switchyard/arrivals answered {status}: is it `switchyard receiver`?"
        ))),
    }
}
