"""Schemathesis hooks for the hostile-input suite (scripts/test).

Loaded with SCHEMATHESIS_HOOKS=schemathesis_hooks (scripts/ on PYTHONPATH). Reads the
credentials a `recstream demo --credentials-file` wrote (RECSTREAM_CREDENTIALS):

- every request carries the credential its operation needs, as a real client would send it:
  the storefront's API key for the collector and recommendations, the marketing token for
  segments, the admin token for the catalog, the shopper's token for carts and orders;
- half of the generated user ids are the shopper's and half of the product ids are real
  catalog ids, so the accepting paths run too (not only 403 and 404);
- one more check: every error answer is the JSON error body `{"error": {"code", "message"}}`.
"""

import json
import os
import urllib.request
import zlib

import schemathesis

with open(os.environ["RECSTREAM_CREDENTIALS"], encoding="utf-8") as f:
    CREDS = json.load(f)


def _products():
    url = CREDS["base_url"] + "/v1/catalog/products?limit=50"
    with urllib.request.urlopen(url, timeout=10) as r:
        return [p["id"] for p in json.load(r)["products"]]


PRODUCTS = _products()
CREDENTIAL_HEADERS = ("x-api-key", "authorization")


def _pick(value, choices):
    """A real value for about half of the generated ones, deterministically per value."""
    if not choices:
        return value
    h = zlib.crc32(repr(value).encode())
    return choices[h % len(choices)] if h % 2 == 0 else value


def _credential(path):
    if path.startswith(("/v1/events", "/v1/recommendations")):
        return "x-api-key", CREDS["storefront_key"]
    if path.startswith("/v1/segments"):
        return "authorization", "Bearer " + CREDS["marketing_token"]
    if path.startswith("/v1/catalog"):
        return "authorization", "Bearer " + CREDS["admin_token"]
    return "authorization", "Bearer " + CREDS["shopper_token"]


@schemathesis.hook
def map_path_parameters(ctx, path_parameters):
    if path_parameters:
        if "user_id" in path_parameters:
            path_parameters["user_id"] = _pick(path_parameters["user_id"], [CREDS["shopper"]])
        if "product_id" in path_parameters:
            path_parameters["product_id"] = _pick(path_parameters["product_id"], PRODUCTS)
    return path_parameters


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict) and isinstance(body.get("product_id"), str):
        body["product_id"] = _pick(body["product_id"], PRODUCTS)
    return body


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = {
        k: v for k, v in (case.headers or {}).items() if k.lower() not in CREDENTIAL_HEADERS
    }
    name, value = _credential(case.operation.path)
    headers[name] = value
    case.headers = headers


@schemathesis.check
def error_body_is_json(ctx, response, case):
    """Every 4xx/5xx answer is `{"error": {"code": <non-empty>, "message": <string>}}`."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/json"):
        raise AssertionError(f"{response.status_code} error with content type {content_type!r}")
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"{response.status_code} error body is not JSON: {e}") from e
    err = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(err, dict) and isinstance(err.get("code"), str) and err["code"]
            and isinstance(err.get("message"), str)):
        raise AssertionError(f"{response.status_code} error body lacks error.code/message: {body!r}")
    return None
