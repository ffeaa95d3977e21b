//! Message framers for plain TCP streams.
