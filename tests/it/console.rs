//! The console's assets: served by the node, with a policy that allows nothing from outside
//! it, and kept out of the API document. Its pages are tested in a browser by `.ci/console`.

use crate::support::Node;

#[tokio::test]
async fn the_console_is_served_by_the_node_with_nothing_from_outside_and_stays_out_of_the_api_document()
 {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(crate::support::embedded_config(dir.path())).await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let res = http
            .get(format!("{}{path}", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let header = |n: &str| {
            res.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{path}: {csp}"
        );
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} names no other origin"
        );
    }
    let (_, doc) = node.api("").get("/openapi.json").await;
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/console")),
        "the console is not part of the API document"
    );
    node.stop().await;
}
