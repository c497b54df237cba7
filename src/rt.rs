//! The worker thread's runtime glue. Each worker runs a current-thread tokio runtime with a
//! `LocalSet` (thread-per-core, see `server`), so the tasks hyper spawns for HTTP/2 (server
//! streams, client connections) can stay on the thread and need not be `Send`.
//!
//! This module sits below both users, the server's connection builder and the upstream pool's
//! HTTP/2 client, so neither imports the other for it.

use std::future::Future;

/// Spawns hyper's tasks on the current worker's `LocalSet`. Only valid inside one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
