//! The browser client script (in progress).
