//! Declarative payload filters on a webhook, checked natively at fan-out,
//! before any plugin runs: a delivery is created only for events whose data
//! matches. A filter is a JSON object of conditions, all of which must hold:
//!
//! ```json
//! {"totalAmount": {"$gte": 1000}, "status": "paid",
//!  "$or": [{"location_id": {"$in": ["loc-1", "loc-2"]}}, {"priority": {"$exist": true}}]}
//! ```
//!
//! Keys are dotted paths into the event data (`payment.method`, `items.0.sku`);
//! a bare value means `$eq`. Operators: `$eq $neq $gt $gte $lt $lte $in $nin
//! $exist $regex` on a path, `$and $or` (lists of filters) at any level.
//! Numbers compare as numbers (`1` equals `1.0`), strings by their characters.
//! A filter is compiled (and so validated) when the webhook is written.

use regex::{Regex, RegexBuilder};
use serde_json::Value;

const MAX_NODES: usize = 200;
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

fn err(msg: impl Into<String>) -> FilterError {
    FilterError(msg.into())
}

/// A checked filter, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Filter(Node);

#[derive(Debug, Clone)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Path(Vec<String>, Op),
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Value),
    Neq(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exist(bool),
    Regex(Regex),
}

impl Filter {
    pub fn compile(spec: &Value) -> Result<Filter, FilterError> {
        let mut budget = MAX_NODES;
        compile_object(spec, 0, &mut budget).map(Filter)
    }

    /// A filter nothing passes.
    pub fn never() -> Filter {
        Filter(Node::Any(Vec::new()))
    }

    pub fn matches(&self, data: &Value) -> bool {
        eval(&self.0, data)
    }
}

fn compile_object(spec: &Value, depth: usize, budget: &mut usize) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return Err(err(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let obj = spec
        .as_object()
        .ok_or_else(|| err(format!("expected an object of conditions, found {spec}")))?;
    let mut all = Vec::new();
    for (key, value) in obj {
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| err(format!("more than {MAX_NODES} conditions")))?;
        match key.as_str() {
            "$and" | "$or" => {
                let list = value
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| err(format!("{key} takes a non-empty list of filters")))?;
                let nodes = list
                    .iter()
                    .map(|f| compile_object(f, depth + 1, budget))
                    .collect::<Result<Vec<_>, _>>()?;
                all.push(if key == "$and" {
                    Node::All(nodes)
                } else {
                    Node::Any(nodes)
                });
            }
            k if k.starts_with('$') => {
                return Err(err(format!(
                    "unknown operator {k} (paths do not start with '$')"
                )));
            }
            path => {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(err(format!("path {path:?} has an empty segment")));
                }
                for op in compile_ops(path, value)? {
                    all.push(Node::Path(segments.clone(), op));
                }
            }
        }
    }
    Ok(Node::All(all))
}

fn compile_ops(path: &str, value: &Value) -> Result<Vec<Op>, FilterError> {
    let Some(obj) = value
        .as_object()
        .filter(|o| o.keys().any(|k| k.starts_with('$')))
    else {
        return Ok(vec![Op::Eq(value.clone())]);
    };
    obj.iter()
        .map(|(op, arg)| {
            let list = || {
                arg.as_array()
                    .cloned()
                    .ok_or_else(|| err(format!("{path}: {op} takes a list")))
            };
            let ordered = || match arg {
                Value::Number(_) | Value::String(_) => Ok(arg.clone()),
                _ => Err(err(format!("{path}: {op} compares with a number or a string"))),
            };
            Ok(match op.as_str() {
                "$eq" => Op::Eq(arg.clone()),
                "$neq" => Op::Neq(arg.clone()),
                "$gt" => Op::Gt(ordered()?),
                "$gte" => Op::Gte(ordered()?),
                "$lt" => Op::Lt(ordered()?),
                "$lte" => Op::Lte(ordered()?),
                "$in" => Op::In(list()?),
                "$nin" => Op::Nin(list()?),
                "$exist" => Op::Exist(
                    arg.as_bool()
                        .ok_or_else(|| err(format!("{path}: $exist takes true or false")))?,
                ),
                "$regex" => {
                    let pattern = arg
                        .as_str()
                        .ok_or_else(|| err(format!("{path}: $regex takes a string")))?;
                    Op::Regex(
                        RegexBuilder::new(pattern)
                            .size_limit(1 << 20)
                            .build()
                            .map_err(|e| err(format!("{path}: $regex: {e}")))?,
                    )
                }
                other => {
                    return Err(err(format!(
                        "{path}: unknown operator {other} (use $eq $neq $gt $gte $lt $lte $in $nin $exist $regex)"
                    )));
                }
            })
        })
        .collect()
}

fn lookup<'a>(data: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(data, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Equality with numbers compared by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn eval(node: &Node, data: &Value) -> bool {
    use std::cmp::Ordering::*;
    match node {
        Node::All(nodes) => nodes.iter().all(|n| eval(n, data)),
        Node::Any(nodes) => nodes.iter().any(|n| eval(n, data)),
        Node::Path(path, op) => {
            let found = lookup(data, path);
            match op {
                Op::Exist(want) => found.is_some_and(|v| !v.is_null()) == *want,
                Op::Neq(v) => !found.is_some_and(|f| same(f, v)),
                Op::Nin(list) => !found.is_some_and(|f| list.iter().any(|v| same(f, v))),
                _ => {
                    let Some(f) = found else { return false };
                    match op {
                        Op::Eq(v) => same(f, v),
                        Op::Gt(v) => order(f, v) == Some(Greater),
                        Op::Gte(v) => matches!(order(f, v), Some(Greater | Equal)),
                        Op::Lt(v) => order(f, v) == Some(Less),
                        Op::Lte(v) => matches!(order(f, v), Some(Less | Equal)),
                        Op::In(list) => list.iter().any(|v| same(f, v)),
                        Op::Regex(re) => f.as_str().is_some_and(|s| re.is_match(s)),
                        Op::Exist(_) | Op::Neq(_) | Op::Nin(_) => unreachable!("handled above"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(filter: Value, data: Value) -> bool {
        Filter::compile(&filter).unwrap().matches(&data)
    }

    #[test]
    fn operators() {
        let d = json!({"amount": 1500.00, "status": "paid", "tags": ["vip"], "payment": {"method": "card"}, "items": [{"sku": "A-1"}], "nothing": null});
        assert!(check(json!({"status": "paid"}), d.clone()));
        assert!(check(json!({"amount": 1500}), d.clone()));
        assert!(check(
            json!({"amount": {"$gte": 1000, "$lt": 2000}}),
            d.clone()
        ));
        assert!(!check(json!({"amount": {"$gt": 1500}}), d.clone()));
        assert!(check(
            json!({"payment.method": {"$in": ["card", "sepa"]}}),
            d.clone()
        ));
        assert!(check(
            json!({"payment.method": {"$nin": ["cash"]}}),
            d.clone()
        ));
        assert!(check(json!({"status": {"$neq": "void"}}), d.clone()));
        assert!(check(
            json!({"items.0.sku": {"$regex": "^A-\\d+$"}}),
            d.clone()
        ));
        assert!(check(
            json!({"missing": {"$exist": false}, "status": {"$exist": true}}),
            d.clone()
        ));
        assert!(check(json!({"nothing": {"$exist": false}}), d.clone()));
        assert!(check(json!({"tags": ["vip"]}), d.clone()));
        assert!(check(
            json!({"$or": [{"status": "void"}, {"amount": {"$lte": 1500}}]}),
            d.clone()
        ));
        assert!(!check(
            json!({"$and": [{"status": "paid"}, {"amount": {"$lt": 10}}]}),
            d.clone()
        ));
        assert!(!check(json!({"missing": {"$gt": 1}}), d.clone()));
        assert!(check(json!({"missing": {"$neq": 1}}), d));
    }

    #[test]
    fn seed_002_filters_are_expressible() {
        let f = json!({"location_id": {"$in": ["loc-123"]}, "category_id": {"$in": ["cat-456"]}, "quantity": {"$lt": 5}});
        assert!(check(
            f.clone(),
            json!({"location_id": "loc-123", "category_id": "cat-456", "quantity": 2})
        ));
        assert!(!check(
            f.clone(),
            json!({"location_id": "loc-123", "category_id": "cat-456", "quantity": 7})
        ));
        assert!(!check(
            f,
            json!({"location_id": "loc-9", "category_id": "cat-456", "quantity": 2})
        ));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (spec, needle) in [
            (json!([1]), "object"),
            (json!({"a": {"$like": 1}}), "$like"),
            (json!({"a": {"$in": 3}}), "list"),
            (json!({"a": {"$regex": "("}}), "regex"),
            (json!({"a": {"$gt": true}}), "number or a string"),
            (json!({"$or": []}), "non-empty"),
            (json!({"$nor": []}), "$nor"),
            (json!({"a..b": 1}), "empty segment"),
        ] {
            let e = Filter::compile(&spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
