"""aws-account-worker, local docker-compose only: prepares moto as a payer account.

moto starts empty; the worker needs its payer account to manage an organization with all
features enabled. Idempotent: an existing organization is kept. Runs once in the `setup`
service (the moto image already has Python and boto3), then the workers start.
"""

import os
import sys
import time
import urllib.request

import boto3
from botocore.exceptions import ClientError

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "http://moto:5000")


def wait_for_moto(deadline_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            with urllib.request.urlopen(f"{ENDPOINT}/moto-api/", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"setup: moto did not answer on {ENDPOINT} within {deadline_seconds:.0f}s")
        time.sleep(1)


def main() -> None:
    wait_for_moto()
    organizations = boto3.client("organizations", endpoint_url=ENDPOINT)
    try:
        organization = organizations.describe_organization()["Organization"]
        print(f"setup: organization {organization['Id']} already exists")
    except ClientError as error:
        if error.response["Error"]["Code"] != "AWSOrganizationsNotInUseException":
            raise
        organization = organizations.create_organization(FeatureSet="ALL")["Organization"]
        print(f"setup: created organization {organization['Id']} (all features)")
    # Service control policies are off until enabled on the root; enable them so that
    # business_model.service_control_policies can be attached (moto may have them on already).
    root = organizations.list_roots()["Roots"][0]["Id"]
    try:
        organizations.enable_policy_type(RootId=root, PolicyType="SERVICE_CONTROL_POLICY")
        print("setup: enabled service control policies on the root")
    except ClientError as error:
        if error.response["Error"]["Code"] != "PolicyTypeAlreadyEnabledException":
            raise

if __name__ == "__main__":
    main()
