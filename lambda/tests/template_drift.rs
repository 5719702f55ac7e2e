//! No drift between deploy/template.yaml and the code:
//!
//! - every DynamoDB table the code opens is in the template under the name the code
//!   derives from `RECSTREAM__AWS__TABLE_PREFIX`, with the key schema (and TTL attribute)
//!   the code creates — read back from the emulator after the code created its tables;
//! - every HTTP API route in the template reaches a handler of the server's router (not
//!   its "no such endpoint" / "method not allowed" fallbacks);
//! - every function's `RECSTREAM__*` variables (Globals merged with the function's) are
//!   keys of the configuration (`Config` rejects unknown keys) and give a valid AWS-mode
//!   configuration.
//!
//! The template is parsed as YAML with CloudFormation's short tags (`!Ref`, `!Sub`,
//! `!GetAtt`, `!Select` …) kept as tagged values. The key-schema part needs
//! `AWS_ENDPOINT_URL` (scripts/test starts moto); under `CI=true` a missing emulator fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use recstream::config::Config;
use recstream_commerce::DynamoStore;
use recstream_features::FeatureConfig;
use recstream_features::store::dynamodb::DynamoFeatureStore;
use recstream_ingest::aws::{AwsConfig, sdk_config};
use recstream_lambda::checkpoint::ConditionalCheckpoints;
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value;

fn template() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/template.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).expect("template parses")
}

fn resources(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
        .collect()
}

fn of_type<'a>(t: &'a Value, ty: &str) -> Vec<(String, &'a Value)> {
    resources(t)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(ty))
        .collect()
}

/// `!Sub "text"` → "text"; a plain string → itself.
fn sub_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Tagged(t) if t.tag == "Sub" => t.value.as_str().map(str::to_string),
        _ => None,
    }
}

/// The table prefix the functions get, as the `!Sub` text (`recstream-${Stage}-`).
fn table_prefix(t: &Value) -> String {
    sub_text(&t["Globals"]["Function"]["Environment"]["Variables"]["RECSTREAM__AWS__TABLE_PREFIX"])
        .expect("Globals set RECSTREAM__AWS__TABLE_PREFIX")
}

/// A table's (hash key, range key) and TTL attribute.
type TableKeys = ((String, Option<String>), Option<String>);

/// Template tables by name (`!Sub` text).
fn template_tables(t: &Value) -> BTreeMap<String, TableKeys> {
    of_type(t, "AWS::DynamoDB::Table")
        .into_iter()
        .map(|(_, r)| {
            let p = &r["Properties"];
            let name = sub_text(&p["TableName"]).expect("TableName");
            let mut hash = None;
            let mut range = None;
            for k in p["KeySchema"].as_sequence().unwrap() {
                let a = k["AttributeName"].as_str().unwrap().to_string();
                match k["KeyType"].as_str().unwrap() {
                    "HASH" => hash = Some(a),
                    "RANGE" => range = Some(a),
                    other => panic!("key type {other}"),
                }
            }
            let ttl = p["TimeToLiveSpecification"]["AttributeName"]
                .as_str()
                .map(str::to_string);
            assert_eq!(
                p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
                Some(true),
                "{name}: point-in-time recovery"
            );
            (name, ((hash.expect("hash key"), range), ttl))
        })
        .collect()
}

fn services_available(test: &str) -> bool {
    if std::env::var("AWS_ENDPOINT_URL").is_ok() {
        return true;
    }
    let msg = format!(
        "{test}: AWS_ENDPOINT_URL is not set, so this emulator test cannot run; run it with \
         `scripts/test`, which starts moto_server and sets it"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
    false
}

#[tokio::test]
async fn tables_match_what_the_code_creates() {
    let t = template();
    let prefix = table_prefix(&t);
    let tables = template_tables(&t);
    // The names the code derives from the prefix the functions get.
    let named = AwsConfig {
        table_prefix: prefix.clone(),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    let sdk = sdk_config(named.region.as_deref()).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let features =
        DynamoFeatureStore::with_client(client.clone(), &named, FeatureConfig::default());
    let mut code_names: Vec<String> = features
        .table_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    code_names.push(
        ConditionalCheckpoints::new(client.clone(), &named)
            .table()
            .to_string(),
    );
    code_names.push(DynamoStore::from_env(&named).await.table().to_string());
    let template_names: BTreeSet<&String> = tables.keys().collect();
    for n in &code_names {
        assert!(
            template_names.contains(n),
            "the code opens {n}; the template has {template_names:?}"
        );
    }
    assert_eq!(
        template_names.len(),
        code_names.len(),
        "tables in the template the code never opens: {template_names:?} vs {code_names:?}"
    );

    if !services_available("tables_match_what_the_code_creates") {
        return;
    }
    // Let the code create its tables (under a unique prefix) and read their keys back.
    let unique = format!(
        "drift-{}-{}-",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let live = AwsConfig {
        table_prefix: unique.clone(),
        ..named.clone()
    };
    DynamoFeatureStore::with_client(client.clone(), &live, FeatureConfig::default())
        .create_tables_if_missing()
        .await
        .unwrap();
    ConditionalCheckpoints::new(client.clone(), &live)
        .create_table_if_missing()
        .await
        .unwrap();
    DynamoStore::from_env(&live)
        .await
        .create_table_if_missing()
        .await
        .unwrap();
    for name in &code_names {
        let live_name = name.replacen(&prefix, &unique, 1);
        let d = client
            .describe_table()
            .table_name(&live_name)
            .send()
            .await
            .unwrap();
        let table = d.table().unwrap();
        let mut hash = None;
        let mut range = None;
        for k in table.key_schema() {
            match k.key_type().as_str() {
                "HASH" => hash = Some(k.attribute_name().to_string()),
                "RANGE" => range = Some(k.attribute_name().to_string()),
                other => panic!("key type {other}"),
            }
        }
        let ttl = client
            .describe_time_to_live()
            .table_name(&live_name)
            .send()
            .await
            .unwrap()
            .time_to_live_description()
            .and_then(|d| d.attribute_name().map(str::to_string));
        let ((t_hash, t_range), t_ttl) = &tables[name];
        assert_eq!(
            (hash.as_ref(), range.as_ref()),
            (Some(t_hash), t_range.as_ref()),
            "{name}: key schema"
        );
        assert_eq!(&ttl, t_ttl, "{name}: TTL attribute");
    }
}

/// (function logical id, its merged environment).
fn function_envs(t: &Value) -> Vec<(String, BTreeMap<String, Value>)> {
    let globals: BTreeMap<String, Value> = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect();
    of_type(t, "AWS::Serverless::Function")
        .into_iter()
        .map(|(id, r)| {
            let mut env = globals.clone();
            if let Some(m) = r["Properties"]["Environment"]["Variables"].as_mapping() {
                for (k, v) in m {
                    env.insert(k.as_str().unwrap().to_string(), v.clone());
                }
            }
            (id, env)
        })
        .collect()
}

/// A TOML value standing for what the variable will hold at run time (`!Ref` to a
/// parameter: its default).
fn toml_value(key: &str, v: &Value, params: &Value) -> String {
    match v {
        Value::Tagged(t) if t.tag == "Ref" && params.get(&t.value).is_some() => {
            let param = &params[&t.value];
            toml_value(key, &param["Default"], params)
        }
        Value::String(s) if s.parse::<i64>().is_ok() => s.clone(),
        Value::String(s) if s == "true" || s == "false" => s.clone(),
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        // Resolved by CloudFormation: a plausible value of the right kind.
        Value::Tagged(_) if key.ends_with("REDIS_URL") => "\"redis://redis.internal:6379/\"".into(),
        Value::Tagged(_) if key.ends_with("_URL") || key.ends_with("ISSUER") => {
            "\"https://cognito-idp.us-east-1.amazonaws.com/pool\"".into()
        }
        Value::Tagged(_) => "\"resolved-by-cloudformation\"".into(),
        other => panic!("{key}: unexpected value {other:?}"),
    }
}

#[test]
fn every_functions_environment_is_a_valid_configuration() {
    let t = template();
    let envs = function_envs(&t);
    assert!(
        envs.len() >= 4,
        "functions: {:?}",
        envs.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for (id, env) in envs {
        // RECSTREAM__SECTION__KEY = value → [section] key = value, as figment's Env does.
        let mut sections: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
        for (k, v) in &env {
            let Some(path) = k.strip_prefix("RECSTREAM__") else {
                continue;
            };
            let mut parts: Vec<String> = path.split("__").map(|p| p.to_lowercase()).collect();
            let leaf = parts.pop().unwrap();
            sections
                .entry(parts)
                .or_default()
                .push(format!("{leaf} = {}", toml_value(k, v, &t["Parameters"])));
        }
        let mut text = String::new();
        for (section, lines) in &sections {
            if !section.is_empty() {
                text.push_str(&format!("[{}]\n", section.join(".")));
            }
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
        }
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(&text))
            .extract()
            .unwrap_or_else(|e| {
                panic!("{id}: its RECSTREAM__* variables are not configuration keys: {e}\n{text}")
            });
        cfg.validate()
            .unwrap_or_else(|e| panic!("{id}: {e}\n{text}"));
        assert_eq!(cfg.mode, recstream::config::Mode::Aws, "{id}: mode");
        let vpc = t["Resources"][id.as_str()]["Properties"]["VpcConfig"].is_mapping();
        assert_eq!(
            env.contains_key("RECSTREAM__AWS__REDIS_URL"),
            vpc,
            "{id}: the functions in the VPC (and only they) are given Redis"
        );
    }
}

#[tokio::test]
async fn every_http_api_route_reaches_a_handler() {
    let t = template();
    let mut routes = Vec::new();
    for (_, f) in of_type(&t, "AWS::Serverless::Function") {
        if let Some(events) = f["Properties"]["Events"].as_mapping() {
            for (_, e) in events {
                if e["Type"].as_str() == Some("HttpApi") {
                    let p = &e["Properties"];
                    routes.push((
                        p["Method"].as_str().unwrap().to_string(),
                        p["Path"].as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    assert!(routes.len() >= 10, "{routes:?}");

    // The router with commerce mounted (commerce needs a way to authenticate callers:
    // a JWKS file, as a Cognito user pool publishes it; only the public key is needed).
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [{"kty": "RSA", "kid": "drift-key", "use": "sig", "alg": "RS256",
            "n": "rM9AiyQ_j3tyYTNNA_cDuAxNMlmKNmGbShapID6c1q36cvNAKeRm8A-e6al0BVzedfuoRtWw3QbogzUCRPOISA19DWDali64EJLjA6t1eWxcPaMoUPjsYhZc0Dpwj3f7HKdDBUw7AhjQ-IYFpYkxz8WSgxOBqeSWR4qMgizJiyW_sr5yApfRLZWh-9bMIwe5zQMDuLBwNhL1bHwA3-2p1g98NFoQbJy1E2Q-JRrUFL1E0zLuYySzPzf1aQsvDqkkMqiBRCmfsUl78qL1f0XfMKWyrJfeMfoVVH9Gg-T2dd37ZQ4bSqSeZ8bZSg3nQrFmS_EmBcVC5XbMB6Xs-LwqMQ", "e": "AQAB"}]})
            .to_string(),
    )
    .unwrap();
    let mut cfg = Config::default();
    cfg.embedded.data_dir = dir.path().join("data");
    cfg.commerce.data_dir = dir.path().join("commerce");
    cfg.commerce.auth.jwks_path = Some(jwks);
    cfg.model.reload_interval_ms = 0;
    let app = recstream_lambda::http::build(cfg).await.unwrap();

    for (method, path) in routes {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let event = json!({
            "version": "2.0",
            "routeKey": format!("{method} {path}"),
            "rawPath": concrete,
            "rawQueryString": "",
            "headers": {"content-type": "application/json", "host": "api.example.com"},
            "requestContext": {
                "accountId": "123456789012", "apiId": "api", "domainName": "api.example.com",
                "domainPrefix": "api", "requestId": "r", "routeKey": format!("{method} {path}"),
                "stage": "$default", "time": "02/Dec/2026:14:00:00 +0000", "timeEpoch": 1796220000000i64,
                "http": {"method": method, "path": concrete, "protocol": "HTTP/1.1",
                          "sourceIp": "203.0.113.7", "userAgent": "drift"}
            },
            "body": if method == "GET" || method == "DELETE" { Json::Null } else { json!("{}") },
            "isBase64Encoded": false
        });
        let req: LambdaRequest = serde_json::from_value(event).unwrap();
        let resp = Adapter::from(app.router.clone())
            .call(LambdaEvent::new(req, Context::default()))
            .await
            .unwrap();
        let v = serde_json::to_value(&resp).unwrap();
        let body: Json =
            serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Json::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            !(code == "not_found" && message == "no such endpoint") && code != "method_not_allowed",
            "{method} {path} in the template has no handler in the router: {} {body}",
            v["statusCode"]
        );
    }
    let _ = app.shutdown.send(true);
}
