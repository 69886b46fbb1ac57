//! Which `Origin`s may connect.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use salvo::http::header::{HOST, HeaderValue, ORIGIN};
use salvo::{Depot, Request};

use super::Refusal;

/// Decides an `Origin` from the request; wrapped in salvo-cors' `AllowOrigin::dynamic`, the
/// same function decides CORS (README, "Origins and CORS: one list").
pub(crate) type OriginFn = dyn Fn(&HeaderValue, &Request, &Depot) -> bool + Send + Sync;

/// Which `Origin`s may connect: the request's own host, an exact allowlist, or what a
/// predicate accepts.
#[derive(Clone, Default)]
pub(crate) struct OriginPolicy {
    allowed: Vec<String>,
    judge: Option<Arc<OriginFn>>,
    require: bool,
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginPolicy")
            .field("allowed", &self.allowed)
            .field("judge", &self.judge.is_some())
            .field("require", &self.require)
            .finish()
    }
}

impl OriginPolicy {
    pub(crate) fn set_judge(&mut self, judge: Arc<OriginFn>) {
        self.judge = Some(judge);
    }

    pub(crate) fn set_allowed(&mut self, origins: &[&str]) {
        self.allowed = origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
    }

    pub(crate) fn set_required(&mut self, require: bool) {
        self.require = require;
    }

    /// Exact, case-insensitive; one `Origin` header at most (a second one could smuggle a
    /// foreign origin past a check that reads only the first).
    pub(crate) fn check(&self, req: &Request, depot: &Depot) -> Result<(), Refusal> {
        let mut values = req.headers().get_all(ORIGIN).iter();
        let (Some(origin), None) = (values.next(), values.next()) else {
            return if req.headers().contains_key(ORIGIN) || self.require {
                Err(Refusal::Origin)
            } else {
                Ok(())
            };
        };
        if let Some(judge) = &self.judge {
            let judged = std::panic::catch_unwind(AssertUnwindSafe(|| judge(origin, req, depot)));
            match judged {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(_) => return Err(Refusal::Panicked("allow_origin_fn")),
            }
        }
        let origin = origin
            .to_str()
            .map_err(|_| Refusal::Origin)?
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return Ok(());
        }
        // Same host: the origin's authority equals the Host header.
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        match (authority, host) {
            (Some(a), Some(h)) if a == h => Ok(()),
            _ => Err(Refusal::Origin),
        }
    }
}
