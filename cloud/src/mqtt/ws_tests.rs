use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

type Client = WebSocketStream<DuplexStream>;

/// A server side ([`accept`]) and a tungstenite client offering `protocols` over an
/// in-memory pipe; the client's handshake result comes back with the response's
/// selected subprotocol.
async fn pair(
    protocols: Option<&str>,
) -> (
    Result<WsIo<DuplexStream>, WsError>,
    Result<(Client, Option<String>), WsError>,
) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut req = "ws://localhost/mqtt"
        .into_client_request()
        .expect("request");
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    let (server, client) = tokio::join!(accept(a, 1024), tokio_tungstenite::client_async(req, b));
    let client = client.map(|(ws, resp)| {
        let chosen = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ascii").to_string());
        (ws, chosen)
    });
    (server, client)
}

/// Runs `f` to its end on a runtime of its own (proptest bodies are not async).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    rt.expect("runtime").block_on(f)
}

#[tokio::test]
async fn packets_split_and_joined_across_frames_read_as_one_stream() {
    let (server, client) = pair(Some("mqttv3.1, mqtt")).await;
    let (mut server, (mut client, chosen)) = (server.expect("server"), client.expect("client"));
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    // A CONNECT cut in two frames, a PINGREQ sharing the second frame.
    let connect: &[u8] = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
    let pingreq: &[u8] = b"\xc0\x00";
    client
        .send(Message::Binary(Bytes::copy_from_slice(&connect[..5])))
        .await
        .expect("send");
    client
        .send(Message::Binary(Bytes::new()))
        .await
        .expect("send");
    client
        .send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("send");
    client
        .send(Message::Binary([&connect[5..], pingreq].concat().into()))
        .await
        .expect("send");
    let mut got = vec![0u8; connect.len() + pingreq.len()];
    server.read_exact(&mut got).await.expect("read");
    assert_eq!(got, [connect, pingreq].concat());
    // What the server writes arrives as one binary frame, after the ping's pong.
    server.write_all(b"\x20\x02\x00\x00").await.expect("write");
    server.flush().await.expect("flush");
    assert_eq!(
        client.next().await.expect("frame").expect("ok"),
        Message::Pong(Bytes::from_static(b"hi"))
    );
    assert_eq!(
        client.next().await.expect("frame").expect("ok"),
        Message::Binary(Bytes::from_static(b"\x20\x02\x00\x00"))
    );
    // A close frame ends the input, as a FIN does.
    client.close(None).await.expect("close");
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).await.expect("eof"), 0);
}

#[tokio::test]
async fn a_text_frame_is_an_error() {
    let (server, client) = pair(Some("mqtt")).await;
    let (mut server, (mut client, _)) = (server.expect("server"), client.expect("client"));
    client
        .send(Message::text("{\"connect\":1}"))
        .await
        .expect("send");
    let mut buf = [0u8; 16];
    let e = server
        .read(&mut buf)
        .await
        .expect_err("a text frame must fail the read");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_client_offering_only_other_subprotocols_is_refused() {
    let (server, client) = pair(Some("chat, wamp")).await;
    assert!(server.is_err());
    match client {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::BAD_REQUEST),
        other => panic!("expected an HTTP 400, got {:?}", other.map(|(_, c)| c)),
    }
}

#[tokio::test]
async fn a_client_offering_no_subprotocol_is_served() {
    let (server, client) = pair(None).await;
    let (mut server, (mut client, chosen)) = (server.expect("server"), client.expect("client"));
    assert_eq!(chosen, None);
    client
        .send(Message::Binary(Bytes::from_static(b"\xc0\x00")))
        .await
        .expect("send");
    let mut got = [0u8; 2];
    server.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"\xc0\x00");
}

#[tokio::test]
async fn a_frame_beyond_the_limit_is_an_error() {
    let (server, client) = pair(Some("mqtt")).await;
    let (mut server, (mut client, _)) = (server.expect("server"), client.expect("client"));
    // accept(.., 1024): frames up to 2 x 1024 + 4096 bytes.
    let big = Bytes::from(vec![0u8; 2 * 1024 + 4096 + 1]);
    let _ = client.send(Message::Binary(big)).await;
    let mut buf = [0u8; 16];
    assert!(server.read(&mut buf).await.is_err());
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However a byte stream is cut into binary frames (empty ones included), the
        /// server reads back exactly the stream.
        #[test]
        fn any_framing_reads_back_the_stream(
            frames in proptest::collection::vec(
                prop_oneof![
                    1 => Just(Vec::new()),
                    3 => proptest::collection::vec(any::<u8>(), 1..400),
                ],
                0..12,
            ),
        ) {
            let data = frames.concat();
            let got = block_on(async {
                let (server, client) = pair(Some("mqtt")).await;
                let (mut server, (mut client, _)) = (server.expect("server"), client.expect("client"));
                for f in frames {
                    client.send(Message::Binary(f.into())).await.expect("send");
                }
                client.close(None).await.expect("close");
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.expect("read");
                got
            });
            prop_assert_eq!(got, data);
        }

        /// Arbitrary bytes where the upgrade request belongs end the handshake with an
        /// error or a WebSocket, never a panic or a hang.
        #[test]
        fn any_request_bytes_end_the_handshake(
            prefix in prop_oneof![Just(b"GET /mqtt HTTP/1.1\r\n".to_vec()), Just(Vec::new())],
            junk in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            block_on(async {
                let (a, mut b) = tokio::io::duplex(1 << 16);
                b.write_all(&[prefix, junk].concat()).await.expect("write");
                b.shutdown().await.expect("shutdown");
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), accept(a, 1024))
                    .await
                    .expect("the handshake ends once the input does");
            });
        }
    }
}
