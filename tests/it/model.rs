//! Random command sequences against a `HashMap` model through a real
//! client; the seed is printed on failure and replayed with `RINGKV_TEST_SEED`.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::support::{error_text, start_node};

const KEYS: &[&str] = &["m0", "m1", "m2", "m3"];

#[derive(Debug, Clone)]
enum Op {
    Set {
        key: usize,
        value: u8,
        cond: u8,
        get: bool,
    },
    Get(usize),
    Del(Vec<usize>),
    Exists(Vec<usize>),
    GetDel(usize),
    SetNx(usize, u8),
    MSet(Vec<(usize, u8)>),
    MGet(Vec<usize>),
    Strlen(usize),
    Dbsize,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let keys = proptest::collection::vec(0..KEYS.len(), 1..5);
    prop_oneof![
        (key.clone(), any::<u8>(), 0..3u8, any::<bool>()).prop_map(|(key, value, cond, get)| {
            Op::Set {
                key,
                value,
                cond,
                get,
            }
        }),
        key.clone().prop_map(Op::Get),
        keys.clone().prop_map(Op::Del),
        keys.clone().prop_map(Op::Exists),
        key.clone().prop_map(Op::GetDel),
        (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::SetNx(k, v)),
        proptest::collection::vec((key.clone(), any::<u8>()), 1..4).prop_map(Op::MSet),
        keys.prop_map(Op::MGet),
        key.prop_map(Op::Strlen),
        Just(Op::Dbsize),
    ]
}

fn bulk(v: Option<&String>) -> Value {
    v.map_or(Value::Nil, |v| Value::BulkString(v.clone().into_bytes()))
}

/// The command to send and the reply the model predicts, applying it.
fn step(op: &Op, model: &mut HashMap<&'static str, String>) -> (Vec<String>, Value) {
    let s = |x: &str| x.to_owned();
    let val = |v: u8| "x".repeat(usize::from(v % 7)) + &v.to_string();
    match op {
        Op::Set {
            key,
            value,
            cond,
            get,
        } => {
            let (k, v) = (KEYS[*key], val(*value));
            let mut args = vec![s("SET"), s(k), v.clone()];
            let allowed = match cond {
                1 => {
                    args.push(s("NX"));
                    !model.contains_key(k)
                }
                2 => {
                    args.push(s("XX"));
                    model.contains_key(k)
                }
                _ => true,
            };
            if *get {
                args.push(s("GET"));
            }
            let old = bulk(model.get(k));
            if allowed {
                model.insert(k, v);
            }
            let reply = match (get, allowed) {
                (true, _) => old,
                (false, true) => Value::Okay,
                (false, false) => Value::Nil,
            };
            (args, reply)
        }
        Op::Get(key) => (vec![s("GET"), s(KEYS[*key])], bulk(model.get(KEYS[*key]))),
        Op::Del(keys) => {
            let n = keys
                .iter()
                .filter(|k| model.remove(KEYS[**k]).is_some())
                .count();
            let args = std::iter::once(s("DEL")).chain(keys.iter().map(|k| s(KEYS[*k])));
            (args.collect(), Value::Int(n as i64))
        }
        Op::Exists(keys) => {
            let n = keys
                .iter()
                .filter(|k| model.contains_key(KEYS[**k]))
                .count();
            let args = std::iter::once(s("EXISTS")).chain(keys.iter().map(|k| s(KEYS[*k])));
            (args.collect(), Value::Int(n as i64))
        }
        Op::GetDel(key) => (
            vec![s("GETDEL"), s(KEYS[*key])],
            bulk(model.remove(KEYS[*key]).as_ref()),
        ),
        Op::SetNx(key, value) => {
            let k = KEYS[*key];
            let fresh = !model.contains_key(k);
            if fresh {
                model.insert(k, val(*value));
            }
            (
                vec![s("SETNX"), s(k), val(*value)],
                Value::Int(i64::from(fresh)),
            )
        }
        Op::MSet(pairs) => {
            let mut args = vec![s("MSET")];
            for (key, value) in pairs {
                args.extend([s(KEYS[*key]), val(*value)]);
                model.insert(KEYS[*key], val(*value));
            }
            (args, Value::Okay)
        }
        Op::MGet(keys) => {
            let values = keys.iter().map(|k| bulk(model.get(KEYS[*k]))).collect();
            let args = std::iter::once(s("MGET")).chain(keys.iter().map(|k| s(KEYS[*k])));
            (args.collect(), Value::Array(values))
        }
        Op::Strlen(key) => {
            let len = model.get(KEYS[*key]).map_or(0, |v| v.len());
            (vec![s("STRLEN"), s(KEYS[*key])], Value::Int(len as i64))
        }
        Op::Dbsize => (vec![s("DBSIZE")], Value::Int(model.len() as i64)),
    }
}

async fn run_case(con: &mut MultiplexedConnection, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut reset = redis::cmd("DEL");
    reset.arg(KEYS);
    let _: i64 = reset
        .query_async(con)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let (args, want) = step(op, &mut model);
        let mut cmd = redis::cmd(&args[0]);
        cmd.arg(&args[1..]);
        let got: Value = cmd
            .query_async(con)
            .await
            .map_err(|e| TestCaseError::fail(format!("op {i} {args:?}: {}", error_text(&e))))?;
        prop_assert_eq!(&got, &want, "op {} {:?}", i, args);
    }
    Ok(())
}

#[test]
fn random_string_commands_match_a_map_model() {
    let seed: u64 = std::env::var("RINGKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| crate::support::unix_ms() as u64);
    let mut seed_bytes = [0u8; 32];
    for (i, chunk) in seed_bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.wrapping_mul(i as u64 + 1).to_le_bytes());
    }
    let config = Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(start_node(|_| {}));
    let con = rt.block_on(node.conn());
    let ops = proptest::collection::vec(op(), 1..40);
    let result = runner.run(&ops, |ops| {
        let mut con = con.clone();
        rt.block_on(run_case(&mut con, &ops))
    });
    rt.block_on(node.shutdown());
    if let Err(e) = result {
        panic!("model test failed with RINGKV_TEST_SEED={seed}: {e}");
    }
}
