"""Upstream credential sources that need no running proxy: AWS role keys."""

from __future__ import annotations

import datetime

from cacheproxy.config import UpstreamConfig
from cacheproxy.upstream.credentials import boto3_ecr_client

ECR_HOST = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
ROLE = "arn:aws:iam::123456789012:role/ecr-puller"


def test_assumed_role_keys_are_renewed_before_they_expire(aws: None) -> None:
    """AssumeRole keys last an hour: the ECR client must not keep using the first."""
    ahead = [datetime.timedelta(0)]

    def clock() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + ahead[0]

    config = UpstreamConfig(
        ECR_HOST, f"https://{ECR_HOST}", ecr=True, region="us-west-2", aws_role_arn=ROLE
    )
    client = boto3_ecr_client(config, role_clock=clock)

    def keys() -> str:
        client.get_authorization_token()
        # The keys the client signed that call with.
        return str(client._request_signer._credentials.get_frozen_credentials().access_key)

    first = keys()
    assert first != "testing"  # the role's keys, not the caller's
    assert keys() == first  # fresh: reused
    ahead[0] = datetime.timedelta(minutes=50)  # 10 minutes left of the hour
    second = keys()
    assert second not in (first, "testing")
    ahead[0] = datetime.timedelta(0)
    assert keys() == second  # renewed keys are kept while they are fresh
