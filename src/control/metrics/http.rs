//! The metrics HTTP side, on hyper's HTTP/1.1 server: `GET /metrics` answers the
//! exposition, `GET /` a pointer to it, anything else 404 (405 for other methods).
//! hyper owns the protocol (request parsing, 400 for a malformed request, 431 for a
//! head over [`MAX_HEAD`], keep-alive); this module owns the routes and the limits a
//! daemon's side port needs: connections served at once, how long a client may take
//! to send its head, and how long one connection may live.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE, Source, render};

/// hyper's read buffer, which bounds the request head (its smallest allowed size).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last (its requests and the writing of their answers):
/// a scraper that stops reading does not hold a slot for ever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long accepting waits after an error (EMFILE and the like) before it retries.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` and serves in a spawned task. Returns once bound; a bind failure is
/// an error naming the address. The caller decides the address: loopback by default
/// (see the module doc); a non-loopback one exposes the counters.
pub async fn serve(addr: SocketAddr, src: Source) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for metrics on {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "metrics served on a non-loopback address: counters are exposed without authentication");
    }
    tracing::info!(addr = %local, "metrics on http://{local}/metrics");
    tokio::spawn(accept_loop(listener, Arc::new(src)));
    Ok(())
}

async fn accept_loop(listener: TcpListener, src: Arc<Source>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let src = src.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |req| answer(req, src.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .max_buf_size(MAX_HEAD)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                        Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection"),
                        Err(_) => tracing::debug!("metrics connection closed after {CONNECTION_TIMEOUT:?}"),
                        Ok(Ok(())) => {}
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    match (method, path) {
        (&Method::GET, "/metrics") => Route::Metrics,
        (&Method::GET, "/") => Route::Index,
        (_, "/metrics" | "/") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE_HEADER, hyper::header::HeaderValue::from_static(content_type));
    r
}

async fn answer(req: Request<Incoming>, src: Arc<Source>) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    Ok(match route(req.method(), req.uri().path()) {
        Route::Metrics => {
            // Rendering walks every service and port: off the (single) runtime worker
            // so a large scrape never stalls the control API.
            match tokio::task::spawn_blocking(move || render(&src)).await {
                Ok(body) => text(StatusCode::OK, CONTENT_TYPE, body),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("render: {e}\n")),
            }
        }
        Route::Index => text(StatusCode::OK, PLAIN, "ucanal exporter: metrics at /metrics\n"),
        Route::NotFound => text(StatusCode::NOT_FOUND, PLAIN, "not found; metrics at /metrics\n"),
        Route::MethodNotAllowed => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
            r.headers_mut().insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
            r
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::super::testing::{bumped, check_exposition, source};
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/"), Route::Index);
        assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::DELETE, "/"), Route::MethodNotAllowed);
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// One request on its own connection (asking to close it after), the raw answer.
    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
    }

    #[tokio::test]
    async fn serves_over_http() {
        let addr = free_port();
        serve(addr, bumped()).await.unwrap();

        let r = get(addr, b"GET /metrics?foo=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert_eq!(header(head, "content-type"), Some(CONTENT_TYPE), "{head}");
        assert_eq!(header(head, "content-length"), Some(body.len().to_string().as_str()), "{head}");
        assert!(body.lines().any(|l| l == r#"ucanal_decisions_total{node="centos7-1",decision="decap"} 1"#), "{body}");
        check_exposition(body);

        let r = get(addr, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

        let r = get(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n") && r.contains("/metrics"), "{r}");

        let r = get(addr, b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert_eq!(header(r.split_once("\r\n\r\n").unwrap().0, "allow"), Some("GET"), "{r}");

        let r = get(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD * 4));
        let r = get(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        // Two requests on one kept-alive connection.
        let r = get(addr, b"GET / HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!(r.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{r}");

        // A client that sends nothing and closes gets nothing, and the server goes on.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
        let r = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = serve(addr, source()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
