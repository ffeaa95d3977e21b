//! Storm's backplane adapters: the I/O side of rooms across nodes.
//!
//! A [`Hub`](storm_host::hub::Hub) made
//! [`with_backplane`](storm_host::hub::Hub::with_backplane) hands every group
//! broadcast to a [`Backplane`](storm_host::hub::Backplane) after delivering
//! it locally; an adapter here carries it to the other nodes of the service
//! and delivers what they publish into the local groups
//! ([`Hub::deliver_group`](storm_host::hub::Hub::deliver_group)). What the
//! nodes say to each other, and every decision about it (channel names, the
//! envelope, node ids, offsets and epochs, de-duplication, gaps, the
//! recovery rule), is the sans-IO protocol in
//! [`storm_proto::backplane`], re-exported here as [`proto`].
//!
//! | feature | adapter |
//! |---|---|
//! | `redis` (default) | [`redis::RedisBackplane`]: pub/sub between nodes, history in Redis Streams with epochs, presence with TTLs; on tokio, smol, and std (hosted on smol) |

#[cfg(feature = "redis")]
pub mod redis;

pub use storm_proto::backplane as proto;
