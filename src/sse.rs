//! Server-Sent Events endpoint (in progress).
