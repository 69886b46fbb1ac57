//! [`delegate_hub!`](crate::hub::delegate_hub): a [`Hub`](crate::Hub) wrapper that passes on
//! every method it does not write itself, so a new method of the trait, or one the author
//! forgot, can't fall back to its `Unsupported` default behind the wrapper.

/// Implements [`Hub`](crate::Hub) for a wrapper by passing every method it doesn't write on
/// to the hub it wraps (a field), so none is left to the trait's default by mistake: a
/// wrapper that forgot [`add_topic`](crate::Hub::add_topic) or [`call`](crate::Hub::call)
/// would answer `Unsupported` to the channel protocol.
///
/// Write the `impl` as usual, with the generics in brackets and `to <field>` naming the wrapped
/// hub, and only the methods that do something of their own:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use salvo_realtime::error::HubError;
/// use salvo_realtime::hub::{delegate_hub, TopicRequest};
/// use salvo_realtime::{Connection, Hub, Identity, Position, Publication, Rooms, Topic};
///
/// /// Counts the messages connections send; everything else goes to the hub inside.
/// #[derive(Clone)]
/// struct Audited<H> {
///     inner: H,
///     received: Arc<AtomicU64>,
/// }
///
/// delegate_hub! {
///     impl[H: Hub] Hub for Audited<H>, to inner {
///         type Subscription = H::Subscription;
///
///         async fn receive(&self, conn: &Connection, message: Publication) -> Result<(), HubError> {
///             self.received.fetch_add(1, Ordering::Relaxed);
///             self.inner.receive(conn, message).await
///         }
///
///         async fn publish_from(
///             &self,
///             conn: &Connection,
///             topic: &Topic,
///             publication: Publication,
///         ) -> Result<salvo_realtime::hub::Published, HubError> {
///             self.received.fetch_add(1, Ordering::Relaxed);
///             self.inner.publish_from(conn, topic, publication).await
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Audited { inner: Rooms::new(), received: Arc::default() };
/// let conn = Connection::new()
///     .authenticated(Identity::new("alice"))
///     .subscribe(Topic::new("lobby")?, Position::Live);
/// let subscription = hub.join(&conn).await?;
/// hub.receive(&conn, Publication::new("hi")).await?;
/// hub.publish_from(&conn, &Topic::new("lobby")?, Publication::new("again")).await?;
/// // Not written above, passed on all the same.
/// hub.add_topic(&conn, TopicRequest::new(Topic::new("news")?)).await?;
/// assert_eq!(hub.received.load(Ordering::Relaxed), 2);
/// hub.leave(&conn, subscription).await;
/// # Ok(())
/// # }
/// ```
///
/// A wrapper that wraps the subscription too (a different `type Subscription`) writes `join`
/// and `leave` itself; if it doesn't, the forwarded ones don't compile (their types differ),
/// which is the point. The methods it writes may be `async fn` or return `impl Future`; the
/// ones passed on return the wrapped hub's futures unchanged (no extra state, no box).
#[macro_export]
#[doc(hidden)]
macro_rules! __delegate_hub {
    // The crate's own `impl Hub for Arc<H>`: the wrapped hub is `**self`.
    (
        impl[$($generics:tt)*] Hub for $ty:ty, to deref {
            type Subscription = $sub:ty;
        }
    ) => {
        $crate::__delegate_hub! { @impl [$($generics)*] [$ty] [deref] [$sub] [] }
    };
    (
        impl[$($generics:tt)*] Hub for $ty:ty, to $field:ident {
            type Subscription = $sub:ty;
            $($items:tt)*
        }
    ) => {
        $crate::__delegate_hub! {
            @scan [[$($generics)*] [$ty] [field $field] [$sub] [$($items)*]] [] $($items)*
        }
    };
    // Collects the names of the methods the wrapper writes, one method per step.
    (
        @scan $ctx:tt [$($names:ident)*]
        $(#[$meta:meta])* async fn $name:ident ($($args:tt)*) $(-> $ret:ty)? $body:block
        $($rest:tt)*
    ) => {
        $crate::__delegate_hub! { @scan $ctx [$($names)* $name] $($rest)* }
    };
    (
        @scan $ctx:tt [$($names:ident)*]
        $(#[$meta:meta])* fn $name:ident ($($args:tt)*) $(-> $ret:ty)? $body:block
        $($rest:tt)*
    ) => {
        $crate::__delegate_hub! { @scan $ctx [$($names)* $name] $($rest)* }
    };
    (
        @scan [[$($generics:tt)*] [$ty:ty] [$($to:tt)*] [$sub:ty] [$($items:tt)*]]
        [$($names:ident)*]
    ) => {
        $crate::__delegate_hub! {
            @impl [$($generics)*] [$ty] [$($to)*] [$sub] [$($names)*] $($items)*
        }
    };
    (
        @impl [$($generics:tt)*] [$ty:ty] [$($to:tt)*] [$sub:ty] [$($written:ident)*]
        $($items:tt)*
    ) => {
        impl<$($generics)*> $crate::Hub for $ty {
            type Subscription = $sub;
            $($items)*
            $crate::__delegate_hub!(@join [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@receive [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@leave [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@note_dropped [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@add_topic [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@remove_topic [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@publish_from [$($to)*] [$($written)*]);
            $crate::__delegate_hub!(@call [$($to)*] [$($written)*]);
        }
    };
    // The wrapped hub, from a method's `self`.
    (@inner $self:tt [field $field:ident]) => { $self.$field };
    (@inner $self:tt [deref]) => { (**$self) };
    // One rule set per method: written by the wrapper (its name is in the list): nothing; the
    // list exhausted: the forwarding method.
    (@join $to:tt [join $($rest:ident)*]) => {};
    (@join $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@join $to [$($rest)*]); };
    (@join $to:tt []) => {
        fn join(
            &self,
            conn: &$crate::Connection,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<Self::Subscription, $crate::error::HubError>,
        > + Send {
            $crate::__delegate_hub!(@inner self $to).join(conn)
        }
    };
    (@receive $to:tt [receive $($rest:ident)*]) => {};
    (@receive $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@receive $to [$($rest)*]); };
    (@receive $to:tt []) => {
        fn receive(
            &self,
            conn: &$crate::Connection,
            message: $crate::Publication,
        ) -> impl ::core::future::Future<Output = ::core::result::Result<(), $crate::error::HubError>>
        + Send {
            $crate::__delegate_hub!(@inner self $to).receive(conn, message)
        }
    };
    (@leave $to:tt [leave $($rest:ident)*]) => {};
    (@leave $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@leave $to [$($rest)*]); };
    (@leave $to:tt []) => {
        fn leave(
            &self,
            conn: &$crate::Connection,
            subscription: Self::Subscription,
        ) -> impl ::core::future::Future<Output = ()> + Send {
            $crate::__delegate_hub!(@inner self $to).leave(conn, subscription)
        }
    };
    (@note_dropped $to:tt [note_dropped $($rest:ident)*]) => {};
    (@note_dropped $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@note_dropped $to [$($rest)*]); };
    (@note_dropped $to:tt []) => {
        fn note_dropped(&self, conn: &$crate::Connection, count: u64) {
            $crate::__delegate_hub!(@inner self $to).note_dropped(conn, count);
        }
    };
    (@add_topic $to:tt [add_topic $($rest:ident)*]) => {};
    (@add_topic $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@add_topic $to [$($rest)*]); };
    (@add_topic $to:tt []) => {
        fn add_topic(
            &self,
            conn: &$crate::Connection,
            request: $crate::hub::TopicRequest,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<
                ::core::option::Option<$crate::hub::__serde_json::Value>,
                $crate::error::HubError,
            >,
        > + Send {
            $crate::__delegate_hub!(@inner self $to).add_topic(conn, request)
        }
    };
    (@remove_topic $to:tt [remove_topic $($rest:ident)*]) => {};
    (@remove_topic $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@remove_topic $to [$($rest)*]); };
    (@remove_topic $to:tt []) => {
        fn remove_topic(
            &self,
            conn: &$crate::Connection,
            topic: &$crate::Topic,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<bool, $crate::error::HubError>,
        > + Send {
            $crate::__delegate_hub!(@inner self $to).remove_topic(conn, topic)
        }
    };
    (@publish_from $to:tt [publish_from $($rest:ident)*]) => {};
    (@publish_from $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@publish_from $to [$($rest)*]); };
    (@publish_from $to:tt []) => {
        fn publish_from(
            &self,
            conn: &$crate::Connection,
            topic: &$crate::Topic,
            publication: $crate::Publication,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<$crate::hub::Published, $crate::error::HubError>,
        > + Send {
            $crate::__delegate_hub!(@inner self $to).publish_from(conn, topic, publication)
        }
    };
    (@call $to:tt [call $($rest:ident)*]) => {};
    (@call $to:tt [$other:ident $($rest:ident)*]) => { $crate::__delegate_hub!(@call $to [$($rest)*]); };
    (@call $to:tt []) => {
        fn call(
            &self,
            conn: &$crate::Connection,
            method: &str,
            data: $crate::hub::__serde_json::Value,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<$crate::hub::__serde_json::Value, $crate::error::HubError>,
        > + Send {
            $crate::__delegate_hub!(@inner self $to).call(conn, method, data)
        }
    };
}
