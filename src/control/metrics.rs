//! Prometheus metrics (opt-in, `--metrics ADDR`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::Dataplane;
use crate::io::observe::Observers;

pub async fn serve(addr: SocketAddr, _dp: Arc<Dataplane>, _obs: Arc<Observers>) -> io::Result<()> {
    Err(io::Error::other(format!("metrics on {addr} are not available in this build")))
}
