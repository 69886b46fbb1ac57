//! Outgoing hooks (Phoenix's `handle_out`): the application looks at each message of a topic
//! on its way to each subscriber, and passes it, drops it for that subscriber, or sends that
//! subscriber a rewritten copy. [`ChannelSubscription`] applies them.
//!
//! # Invariants
//!
//! * A connection whose topics match no hook pays one branch per delivery: the hooks and the
//!   context they need are only built, once per connection, when some hook exists.
//! * A message that passes is the hub's own, shared one (its frame encoded once for every
//!   subscriber); only a rewritten copy is encoded for its one subscriber.
//! * A hook that panics drops that message for that subscriber (a hook may be a privacy
//!   filter: failing closed), logged; the connection goes on.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;

use super::{Ctx, Pattern};
use crate::backend::{Backend, Local};
use crate::hub::{CONNECTION_TOPIC, Delivery, Message, Publication, Subscription};

/// What an [`on_outgoing`](super::Channels::on_outgoing) hook does with one message for one
/// subscriber.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outgoing {
    /// Send it as it is (the shared frame every subscriber gets).
    Pass,
    /// Don't send it to this subscriber.
    Drop,
    /// Send this subscriber this instead: same topic, id and time, the publication's payload,
    /// event name and tags (encoded for this subscriber alone). A publication that isn't valid
    /// drops the message, logged.
    Replace(Publication),
}

pub(super) type OutgoingFn<B, S> = dyn Fn(&Ctx<B, S>, &Message) -> Outgoing + Send + Sync;

/// The hooks in the order added, each with the topics it is for.
pub(super) type HookList<B, S> = Arc<[(Pattern, Arc<OutgoingFn<B, S>>)]>;

/// The hooks of one connection and the context they are called with.
struct Hooks<B: Backend, S> {
    ctx: Ctx<B, S>,
    hooks: HookList<B, S>,
}

/// A [`Channels`](super::Channels) connection's deliveries: the [`Rooms`](crate::Rooms)
/// subscription's, through the outgoing hooks that match each message's topic.
pub struct ChannelSubscription<B: Backend = Local, S = ()> {
    inner: Subscription,
    hooks: Option<Box<Hooks<B, S>>>,
}

impl<B: Backend, S> std::fmt::Debug for ChannelSubscription<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSubscription")
            .field("inner", &self.inner)
            .field("hooked", &self.hooks.is_some())
            .finish()
    }
}

impl<B: Backend, S: Send + Sync + 'static> ChannelSubscription<B, S> {
    pub(super) fn new(
        inner: Subscription,
        ctx: impl FnOnce() -> Ctx<B, S>,
        hooks: &HookList<B, S>,
    ) -> Self {
        let hooks = (!hooks.is_empty()).then(|| {
            Box::new(Hooks {
                ctx: ctx(),
                hooks: Arc::clone(hooks),
            })
        });
        Self { inner, hooks }
    }

    pub(super) fn into_inner(self) -> Subscription {
        self.inner
    }
}

impl<B: Backend, S> Hooks<B, S> {
    /// `m` as this subscriber gets it, or `None` if a hook dropped it.
    fn apply(&self, m: Message) -> Option<Message> {
        let topic = m.topic().as_str();
        if m.is_ephemeral() || topic == CONNECTION_TOPIC {
            return Some(m);
        }
        let Some((_, hook)) = self.hooks.iter().find(|(p, _)| p.matches(topic).is_some()) else {
            return Some(m);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| hook(&self.ctx, &m))) {
            Ok(Outgoing::Pass) => Some(m),
            Ok(Outgoing::Drop) => None,
            Ok(Outgoing::Replace(p)) => match p.check() {
                Ok(()) => Some(m.rewritten(p)),
                Err(e) => {
                    tracing::error!(error = %e, topic, "an outgoing hook's publication is not valid");
                    None
                }
            },
            Err(_) => {
                tracing::error!(topic, "an outgoing hook panicked; the message was not sent");
                None
            }
        }
    }
}

impl<B: Backend, S> Stream for ChannelSubscription<B, S> {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        loop {
            let delivery = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx));
            let Some(hooks) = &this.hooks else {
                return Poll::Ready(delivery);
            };
            match delivery {
                Some(Delivery::Message(m)) => {
                    if let Some(m) = hooks.apply(m) {
                        return Poll::Ready(Some(Delivery::Message(m)));
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }
}
