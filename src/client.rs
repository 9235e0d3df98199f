//! The API client behind `switchyard deliveries …` and `switchyard endpoints …`: calls a running
//! node with a workspace API key and renders readable tables (or the raw JSON).

use serde_json::Value;

/// Why a CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
}

/// A workspace-scoped client of one node.
pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("no error body")
                .to_string();
            Err(ClientError::Refused { status, message })
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.call(
            self.http
                .post(format!("{}{path}", self.base))
                .json(&serde_json::json!({})),
        )
        .await
    }
}

/// A table of `columns` (JSON field names) over `rows`, widths fitted to the content.
pub fn table(rows: &[Value], columns: &[&str]) -> String {
    let cell = |r: &Value, c: &str| match &r[c] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.to_string()).collect());
    for r in rows {
        out += &line(columns.iter().map(|c| cell(r, c)).collect());
    }
    out
}
