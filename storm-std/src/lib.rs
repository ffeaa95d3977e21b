//! Storm on blocking `std::net` sockets and threads.

pub use storm_proto as proto;
