//! One behavioural test suite, run against every engine.

use bytes::Bytes;

use super::{Durability, Engine, FjallEngine, MemoryEngine, keys};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn get_put_remove(e: &dyn Engine) {
    assert_eq!(e.get(b"k1").unwrap(), None);
    e.put(Bytes::copy_from_slice(b"k1"), b("v1")).unwrap();
    assert_eq!(e.get(b"k1").unwrap(), Some(b("v1")));
    e.put(Bytes::copy_from_slice(b"k1"), b("v2")).unwrap();
    assert_eq!(e.get(b"k1").unwrap(), Some(b("v2")));
    e.remove(b"k1").unwrap();
    assert_eq!(e.get(b"k1").unwrap(), None);
    e.remove(b"never").unwrap();
}

fn empty_and_large_values(e: &dyn Engine) {
    e.put(Bytes::copy_from_slice(b"empty"), Bytes::new())
        .unwrap();
    assert_eq!(e.get(b"empty").unwrap(), Some(Bytes::new()));
    let big = Bytes::from(vec![7u8; 1 << 20]);
    e.put(Bytes::copy_from_slice(b"big"), big.clone()).unwrap();
    assert_eq!(e.get(b"big").unwrap(), Some(big));
}

fn scan_is_ordered_bounded_and_limited(e: &dyn Engine) {
    for k in ["a", "b", "c", "d", "e"] {
        e.put(Bytes::copy_from_slice(k.as_bytes()), b(k)).unwrap();
    }
    let got: Vec<_> = e.scan(b"b", Some(b"e"), 10).unwrap();
    let keys: Vec<_> = got.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b("b"), b("c"), b("d")]);
    assert_eq!(got[0].1, b("b"));
    assert_eq!(e.scan(b"a", None, 2).unwrap().len(), 2);
    assert_eq!(e.scan(b"c", None, 10).unwrap().len(), 3);
}

fn partition_ranges_hold_exactly_their_keys(e: &dyn Engine) {
    for p in [0u16, 1, 2, 255, 256, 1023, u16::MAX] {
        for i in 0..3u8 {
            e.put(keys::encode(p, "default", &[i]).into(), b("x"))
                .unwrap();
        }
        e.put(keys::encode(p, "other", b"k").into(), b("y"))
            .unwrap();
    }
    for p in [0u16, 1, 2, 255, 256, 1023, u16::MAX] {
        let (start, end) = keys::partition_range(p);
        let got = e.scan(&start, end.as_deref(), 100).unwrap();
        assert_eq!(got.len(), 4, "partition {p}");
        for (k, _) in got {
            assert_eq!(keys::decode(&k).unwrap().partition, p);
        }
    }
}

fn scan_resumes_from_successor(e: &dyn Engine) {
    for i in 0..50u32 {
        e.put(keys::encode(7, "default", &i.to_be_bytes()).into(), b("v"))
            .unwrap();
    }
    let (start, end) = keys::partition_range(7);
    let mut cursor = start;
    let mut seen = 0;
    loop {
        let page = e.scan(&cursor, end.as_deref(), 8).unwrap();
        let Some((last, _)) = page.last() else { break };
        seen += page.len();
        cursor = keys::successor(last);
    }
    assert_eq!(seen, 50);
}

fn flush_succeeds(e: &dyn Engine) {
    e.put(Bytes::copy_from_slice(b"f"), b("v")).unwrap();
    e.flush(Durability::Buffer).unwrap();
    e.flush(Durability::Sync).unwrap();
    assert!(e.size_bytes() > 0 || e.kind() == "fjall");
}

macro_rules! engine_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn get_put_remove() {
                let (_guard, e) = $make;
                super::get_put_remove(&e);
            }
            #[test]
            fn empty_and_large_values() {
                let (_guard, e) = $make;
                super::empty_and_large_values(&e);
            }
            #[test]
            fn scan_is_ordered_bounded_and_limited() {
                let (_guard, e) = $make;
                super::scan_is_ordered_bounded_and_limited(&e);
            }
            #[test]
            fn partition_ranges_hold_exactly_their_keys() {
                let (_guard, e) = $make;
                super::partition_ranges_hold_exactly_their_keys(&e);
            }
            #[test]
            fn scan_resumes_from_successor() {
                let (_guard, e) = $make;
                super::scan_resumes_from_successor(&e);
            }
            #[test]
            fn flush_succeeds() {
                let (_guard, e) = $make;
                super::flush_succeeds(&e);
            }
        }
    };
}

engine_suite!(memory, ((), MemoryEngine::new()));
engine_suite!(fjall, {
    let dir = tempfile::tempdir().unwrap();
    let e = FjallEngine::open(dir.path(), 8 << 20).unwrap();
    (dir, e)
});

#[test]
fn fjall_recovers_flushed_writes_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        for i in 0..1000u32 {
            e.put(
                Bytes::copy_from_slice(&i.to_be_bytes()),
                Bytes::from(i.to_string()),
            )
            .unwrap();
        }
        e.remove(&5u32.to_be_bytes()).unwrap();
        e.flush(Durability::Sync).unwrap();
    }
    let e = FjallEngine::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(e.get(&999u32.to_be_bytes()).unwrap(), Some(b("999")));
    assert_eq!(e.get(&5u32.to_be_bytes()).unwrap(), None);
    assert_eq!(e.scan(&[], None, 10_000).unwrap().len(), 999);
}
