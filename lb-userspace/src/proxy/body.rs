//! Response body wrapper that counts bytes and, when the body ends or is dropped (client gone),
//! records the request in metrics and the access log: durations include streaming.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{
    access_log::{AccessLog, AccessRecord, millis},
    metrics::UpstreamErrorKind,
    metrics::{GatewayMetrics, NO_ROUTE},
    upstream::{BoxError, ProxyBody},
};

/// What is known about a request when its response head is ready.
pub(super) struct Finish {
    pub record: AccessRecord,
    pub start: Instant,
    pub metrics: Arc<GatewayMetrics>,
    pub log: AccessLog,
    /// The request's breaker place: released when the response ends.
    pub _hold: Option<super::resilience::breaker::RequestPermit>,
}

impl Finish {
    fn done(mut self, bytes: u64) {
        let elapsed = self.start.elapsed();
        self.record.bytes = bytes;
        self.record.duration_ms = millis(elapsed);
        let route = self.record.route.as_deref().unwrap_or(NO_ROUTE);
        self.metrics
            .observe_request(route, self.record.status, elapsed);
        self.log.log(&self.record, &self.metrics);
    }
}

pub(super) struct Observed {
    inner: ProxyBody,
    bytes: u64,
    finish: Option<Finish>,
}

impl Observed {
    pub fn new(inner: ProxyBody, finish: Finish) -> Self {
        Self {
            inner,
            bytes: 0,
            finish: Some(finish),
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f.done(self.bytes);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.finish.take() {
                    f.done(this.bytes);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fails a body that yields nothing for `idle` (a stalled backend would otherwise hold the
/// client's request open forever), counting an upstream timeout.
pub(super) struct IdleTimeout {
    inner: ProxyBody,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    metrics: Arc<GatewayMetrics>,
    service: Arc<str>,
}

impl IdleTimeout {
    pub fn new(
        inner: ProxyBody,
        idle: Duration,
        metrics: Arc<GatewayMetrics>,
        service: Arc<str>,
    ) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            metrics,
            service,
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.metrics
                        .upstream_error(&this.service, UpstreamErrorKind::Timeout);
                    return Poll::Ready(Some(Err("upstream body idle timeout".into())));
                }
                Poll::Pending
            }
            ready => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
