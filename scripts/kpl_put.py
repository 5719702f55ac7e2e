#!/usr/bin/env python3
"""Put KPL-aggregated records into a Kinesis stream with the real `aws-kinesis-agg`
package (a third-party producer of the KPL format), so that the Rust consumer's
de-aggregation is tested against bytes it did not write itself.

Input (stdin): JSON lines {"pk": "<partition key>", "data": "<utf-8 text>"}.
Output (stdout): one JSON line per Kinesis record put:
  {"shard_id": ..., "sequence_number": ..., "user_records": n, "partition_key": ...}

Endpoint, region and credentials come from the standard AWS environment
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), as for every recstream client.

  kpl_put.py --stream NAME [--per-aggregate K] [--explicit-hash-keys] [--flush-on-key-change]
"""

import argparse
import json
import os
import sys

import boto3
from aws_kinesis_agg.aggregator import RecordAggregator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--per-aggregate", type=int, default=50,
                    help="user records per aggregated Kinesis record (at most)")
    ap.add_argument("--explicit-hash-keys", action="store_true",
                    help="give every user record an explicit hash key (fills that table too)")
    ap.add_argument("--flush-on-key-change", action="store_true",
                    help="start a new aggregate when the partition key changes (as the KPL, "
                         "which aggregates per shard, does for keys of different shards)")
    args = ap.parse_args()
    if args.per_aggregate < 1:
        ap.error("--per-aggregate must be at least 1")

    kinesis = boto3.client(
        "kinesis",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KINESIS") or os.environ.get("AWS_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )
    users = [json.loads(line) for line in sys.stdin if line.strip()]

    def put(agg_record, n):
        pk, ehk, data = agg_record.get_contents()
        kwargs = {"StreamName": args.stream, "Data": data, "PartitionKey": pk}
        if ehk:
            kwargs["ExplicitHashKey"] = ehk
        out = kinesis.put_record(**kwargs)
        print(json.dumps({
            "shard_id": out["ShardId"],
            "sequence_number": out["SequenceNumber"],
            "user_records": n,
            "partition_key": pk,
        }), flush=True)

    aggregator = RecordAggregator()
    in_current = 0
    last_pk = None
    for i, u in enumerate(users):
        if args.flush_on_key_change and last_pk is not None and u["pk"] != last_pk and in_current:
            put(aggregator.clear_and_get(), in_current)
            in_current = 0
        last_pk = u["pk"]
        ehk = str(10 ** 20 + i) if args.explicit_hash_keys else None
        full = aggregator.add_user_record(u["pk"], u["data"].encode("utf-8"), ehk)
        if full is not None:
            # The aggregator was full: it returned the full record and started a new
            # one holding this user record.
            put(full, in_current)
            in_current = 1
        else:
            in_current += 1
        if in_current >= args.per_aggregate:
            put(aggregator.clear_and_get(), in_current)
            in_current = 0
    rest = aggregator.clear_and_get()
    if rest is not None:
        put(rest, in_current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
