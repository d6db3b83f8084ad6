//! The minimal HTTP responder both binaries serve their Prometheus text on: `GET /metrics`
//! answers with what `render` returns (run on a blocking thread), anything else 404;
//! one request per connection, which is what Prometheus and curl send.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Renders the metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on an already bound listener until the process ends.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 2048];
            let mut n = 0;
            // Read until the end of the request head (or the buffer fills).
            while n < req.len() {
                match sock.read(&mut req[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
                if req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let (status, body) = if req[..n].starts_with(b"GET /metrics") {
                let body = tokio::task::spawn_blocking(move || render())
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
