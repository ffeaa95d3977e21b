//! Model test of the hub's groups: random connects, disconnects, joins,
//! leaves and group broadcasts, checked after every step against a plain
//! `HashMap<String, HashSet<u64>>`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use storm_host::hub::{GroupError, Hub, HubConfig, Outbox, SessionId};
use storm_proto::Message;

const GROUPS: [&str; 4] = ["a", "b", "lobby", "room:42"];

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Disconnect(usize),
    Join(usize, usize),
    Leave(usize, usize),
    LeaveAll(usize),
    Broadcast(usize, Option<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0usize..8;
    let g = 0usize..GROUPS.len();
    prop_oneof![
        1 => Just(Op::Connect),
        1 => s.clone().prop_map(Op::Disconnect),
        4 => (s.clone(), g.clone()).prop_map(|(s, g)| Op::Join(s, g)),
        2 => (s.clone(), g.clone()).prop_map(|(s, g)| Op::Leave(s, g)),
        1 => s.clone().prop_map(Op::LeaveAll),
        2 => (g, proptest::option::of(s)).prop_map(|(g, e)| Op::Broadcast(g, e)),
    ]
}

proptest! {
    #[test]
    fn groups_match_a_reference_model(ops in proptest::collection::vec(op(), 1..120)) {
        let hub = Hub::new(HubConfig::default(), Instant::now()).unwrap();
        // Every session ever connected (disconnected ones stay, to be poked).
        let mut sessions: Vec<Arc<Outbox>> = Vec::new();
        let mut live: HashSet<u64> = HashSet::new();
        let mut model: HashMap<String, HashSet<u64>> = HashMap::new();
        let mut inbox: HashMap<u64, usize> = HashMap::new();

        for op in ops {
            let pick = |i: usize| sessions.get(i % sessions.len().max(1)).cloned();
            match op {
                Op::Connect => {
                    let s = hub.register(hub.try_admit().unwrap(), Instant::now()).unwrap();
                    live.insert(s.id().get());
                    sessions.push(s);
                }
                Op::Disconnect(i) => if let Some(s) = pick(i) {
                    let was_live = live.remove(&s.id().get());
                    prop_assert_eq!(hub.disconnect(s.id()).is_some(), was_live);
                    for members in model.values_mut() {
                        members.remove(&s.id().get());
                    }
                },
                Op::Join(i, g) => if let Some(s) = pick(i) {
                    let id = s.id().get();
                    let result = hub.join(s.id(), GROUPS[g]);
                    if live.contains(&id) {
                        let fresh = model.entry(GROUPS[g].to_owned()).or_default().insert(id);
                        prop_assert_eq!(result, Ok(fresh));
                    } else {
                        prop_assert_eq!(result, Err(GroupError::UnknownSession(s.id())));
                    }
                },
                Op::Leave(i, g) => if let Some(s) = pick(i) {
                    let was = model.get_mut(GROUPS[g]).is_some_and(|m| m.remove(&s.id().get()));
                    prop_assert_eq!(hub.leave(s.id(), GROUPS[g]), was);
                },
                Op::LeaveAll(i) => if let Some(s) = pick(i) {
                    let mut left = 0;
                    for members in model.values_mut() {
                        left += usize::from(members.remove(&s.id().get()));
                    }
                    prop_assert_eq!(hub.leave_all(s.id()), left);
                },
                Op::Broadcast(g, exclude) => {
                    let exclude = exclude.and_then(pick).map(|s| s.id());
                    let report = hub.broadcast_group(GROUPS[g], &Message::from(Bytes::from_static(b"x")), exclude);
                    let expected: Vec<u64> = model.get(GROUPS[g]).map(|m| {
                        m.iter().copied().filter(|&id| Some(SessionId::new(id)) != exclude).collect()
                    }).unwrap_or_default();
                    prop_assert_eq!(report.delivered, expected.len());
                    prop_assert_eq!(report.recipients(), expected.len());
                    for id in expected {
                        *inbox.entry(id).or_default() += 1;
                    }
                }
            }
            model.retain(|_, members| !members.is_empty());

            // The hub agrees with the model, seen from every side.
            let names: BTreeSet<&str> = model.keys().map(String::as_str).collect();
            prop_assert_eq!(hub.group_names(), names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
            prop_assert_eq!(hub.group_count(), model.len());
            for name in GROUPS {
                let mut members: Vec<u64> = model.get(name).map(|m| m.iter().copied().collect()).unwrap_or_default();
                members.sort_unstable();
                prop_assert_eq!(hub.member_count(name), members.len());
                prop_assert_eq!(hub.members(name).into_iter().map(SessionId::get).collect::<Vec<_>>(), members);
            }
            for s in &sessions {
                let id = s.id().get();
                let mine: BTreeSet<&str> = model.iter().filter(|(_, m)| m.contains(&id)).map(|(n, _)| n.as_str()).collect();
                prop_assert_eq!(hub.groups_of(s.id()), mine.iter().map(|n| n.to_string()).collect::<Vec<_>>());
            }
            prop_assert_eq!(hub.session_count(), live.len());
        }
        // Every delivery landed in the right outbox.
        for s in &sessions {
            prop_assert_eq!(s.queued_messages(), inbox.get(&s.id().get()).copied().unwrap_or(0));
        }
    }
}
