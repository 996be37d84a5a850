#!/usr/bin/env python3
"""The emulator's resources agree with template.yaml.

provision.py interprets the template; this test provisions a stack on a
fresh moto server (in process, free port) exactly as `make run` and the
end-to-end tests do, then reads every resource back through the AWS APIs
and compares it with the template's own properties: every topic, queue
(timeouts, retention, delay, redrive to the right dead-letter queue), queue
policy, subscription (protocol, endpoint, raw delivery, filter policy and
scope) and table (keys, attribute types, indexes, TTL) is there as declared,
and nothing the emulator can hold was skipped but what a false condition
leaves out. Parameters given on the command line reach the resources.

Run: python -m unittest localstack/test_provision.py (make test does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import unittest

import boto3
from moto.server import ThreadedMotoServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEMPLATE = os.path.join(ROOT, "template.yaml")
sys.path.insert(0, HERE)
import provision  # noqa: E402  (the interpreter under test resolves intrinsics)

REGION = "us-east-1"
EMULATED = {"AWS::SNS::Topic", "AWS::SNS::Subscription", "AWS::SQS::Queue", "AWS::SQS::QueuePolicy",
            "AWS::DynamoDB::Table"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProvisionAgreesWithTemplate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        os.environ.pop("AWS_ENDPOINT_URL", None)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        cls.port = free_port()
        cls.server = ThreadedMotoServer(ip_address="127.0.0.1", port=cls.port, verbose=False)
        cls.server.start()
        cls.endpoint = f"http://127.0.0.1:{cls.port}"
        session = boto3.Session(region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
        cls.sqs = session.client("sqs", endpoint_url=cls.endpoint)
        cls.sns = session.client("sns", endpoint_url=cls.endpoint)
        cls.ddb = session.client("dynamodb", endpoint_url=cls.endpoint)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def provision(self, stack_name: str, parameters: dict[str, str]) -> tuple[provision.Stack, dict]:
        args = [sys.executable, os.path.join(HERE, "provision.py"), "--template", TEMPLATE,
                "--endpoint", self.endpoint, "--region", REGION, "--stack-name", stack_name]
        for key, value in parameters.items():
            args += ["--parameter", f"{key}={value}"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        outputs = json.loads(done.stdout)
        stack = provision.Stack(provision.load_template(TEMPLATE), stack_name=stack_name, region=REGION,
                                account_id=provision.DEFAULT_ACCOUNT_ID, parameters=parameters)
        return stack, outputs

    def resolved(self, stack: provision.Stack, lid: str) -> dict:
        return stack.resolve(stack.resources[lid].get("Properties") or {})

    @staticmethod
    def active(stack: provision.Stack, resource: dict) -> bool:
        """Not left out by its Condition (evaluated with the stack's parameters)."""
        cond = resource.get("Condition")
        return cond is None or stack.condition(cond)

    def check_stack(self, stack_name: str, parameters: dict[str, str]) -> tuple[provision.Stack, dict]:
        template = provision.load_template(TEMPLATE)
        stack, outputs = self.provision(stack_name, parameters)
        self.assertTrue(outputs.get("TopicArn", "").endswith(f"{stack_name}-events"), outputs)
        topics = {t["TopicArn"] for t in self.sns.list_topics()["Topics"]}
        queue_arns: dict[str, str] = {}  # logical id -> ARN
        # Physical names first: the interpreter's own resolution of names.
        for lid, res in template["Resources"].items():
            if not self.active(stack, res):
                continue
            if res.get("Type") == "AWS::SQS::Queue":
                name = self.resolved(stack, lid)["QueueName"]
                url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
                queue_arns[lid] = self.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                stack.physical[lid] = url
                stack.attrs[lid] = {"Arn": queue_arns[lid], "QueueName": name, "QueueUrl": url}
            elif res.get("Type") == "AWS::SNS::Topic":
                name = self.resolved(stack, lid)["TopicName"]
                arn = next((t for t in topics if t.endswith(f":{name}")), None)
                self.assertIsNotNone(arn, f"topic {name} missing")
                stack.physical[lid] = arn
                stack.attrs[lid] = {"TopicArn": arn, "TopicName": name}
            elif res.get("Type") == "AWS::DynamoDB::Table":
                name = self.resolved(stack, lid)["TableName"]
                stack.physical[lid] = name
                stack.attrs[lid] = {"Arn": f"arn:aws:dynamodb:{REGION}:{provision.DEFAULT_ACCOUNT_ID}:table/{name}"}
        checked = set()
        for lid, res in template["Resources"].items():
            rtype = res.get("Type")
            if rtype not in EMULATED or not self.active(stack, res):
                continue
            with self.subTest(resource=lid):
                props = self.resolved(stack, lid)
                getattr(self, "check_" + rtype.split("::", 1)[1].replace("::", "_").lower())(stack, lid, props)
                checked.add(lid)
        declared = {lid for lid, res in template["Resources"].items()
                    if res.get("Type") in EMULATED and self.active(stack, res)}
        self.assertEqual(checked, declared, "every emulated resource was checked")
        return stack, outputs

    # ---- per type ------------------------------------------------------

    def check_sns_topic(self, stack, lid, props):
        self.assertIn(stack.physical[lid], {t["TopicArn"] for t in self.sns.list_topics()["Topics"]})

    def check_sqs_queue(self, stack, lid, props):
        attrs = self.sqs.get_queue_attributes(QueueUrl=stack.physical[lid], AttributeNames=["All"])["Attributes"]
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds"):
            if key in props:
                self.assertEqual(str(attrs.get(key)), str(props[key]), f"{lid}.{key}")
        if "RedrivePolicy" in props:
            actual = json.loads(attrs["RedrivePolicy"])
            self.assertEqual(actual["deadLetterTargetArn"], props["RedrivePolicy"]["deadLetterTargetArn"], lid)
            self.assertEqual(int(actual["maxReceiveCount"]), int(props["RedrivePolicy"]["maxReceiveCount"]), lid)
        else:
            self.assertNotIn("RedrivePolicy", attrs, f"{lid} has a redrive policy the template does not declare")

    def check_sqs_queuepolicy(self, stack, lid, props):
        for url in props["Queues"]:
            policy = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"]
            self.assertEqual(provision._normalise(json.loads(policy)), provision._normalise(props["PolicyDocument"]),
                             lid)

    def check_sns_subscription(self, stack, lid, props):
        subs = self.sns.list_subscriptions_by_topic(TopicArn=props["TopicArn"])["Subscriptions"]
        match = [s for s in subs if s["Endpoint"] == props["Endpoint"] and s["Protocol"] == props["Protocol"]]
        self.assertEqual(len(match), 1, f"{lid}: one subscription of {props['Endpoint']}, got {match}")
        attrs = self.sns.get_subscription_attributes(SubscriptionArn=match[0]["SubscriptionArn"])["Attributes"]
        self.assertEqual(attrs.get("RawMessageDelivery", "false").lower(),
                         str(props.get("RawMessageDelivery", False)).lower(), lid)
        if "FilterPolicy" in props:
            self.assertEqual(json.loads(attrs["FilterPolicy"]), props["FilterPolicy"], f"{lid} filter policy")
            self.assertEqual(attrs.get("FilterPolicyScope", "MessageAttributes"),
                             props.get("FilterPolicyScope", "MessageAttributes"), lid)
        else:
            self.assertNotIn("FilterPolicy", attrs, f"{lid} filters what the template does not")

    def check_dynamodb_table(self, stack, lid, props):
        table = self.ddb.describe_table(TableName=stack.physical[lid])["Table"]
        self.assertEqual(table["KeySchema"], props["KeySchema"], f"{lid} keys")
        self.assertEqual(sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
                         sorted(props["AttributeDefinitions"], key=lambda a: a["AttributeName"]), lid)
        actual = {g["IndexName"]: g for g in table.get("GlobalSecondaryIndexes", [])}
        declared = {g["IndexName"]: g for g in props.get("GlobalSecondaryIndexes", [])}
        self.assertEqual(set(actual), set(declared), f"{lid} indexes")
        for name, index in declared.items():
            self.assertEqual(actual[name]["KeySchema"], index["KeySchema"], f"{lid}.{name}")
            self.assertEqual(actual[name]["Projection"]["ProjectionType"], index["Projection"]["ProjectionType"])
        ttl = self.ddb.describe_time_to_live(TableName=stack.physical[lid])["TimeToLiveDescription"]
        if "TimeToLiveSpecification" in props:
            self.assertEqual(ttl.get("TimeToLiveStatus"), "ENABLED", f"{lid} TTL")
            self.assertEqual(ttl.get("AttributeName"), props["TimeToLiveSpecification"]["AttributeName"], lid)
        else:
            self.assertNotEqual(ttl.get("TimeToLiveStatus"), "ENABLED", f"{lid} has TTL the template lacks")

    # ---- tests --------------------------------------------------------

    def test_defaults(self):
        self.check_stack("agree-defaults", {})

    def test_parameters_reach_the_resources(self):
        stack, _ = self.check_stack("agree-params", {"PersistVisibilityTimeoutSeconds": "7",
                                                  "ConnectorMaxReceiveCount": "3",
                                                  "FallbackDelaySeconds": "9"})
        attrs = self.sqs.get_queue_attributes(QueueUrl=stack.physical["FallbackQueue"],
                                              AttributeNames=["DelaySeconds"])["Attributes"]
        self.assertEqual(attrs["DelaySeconds"], "9")

    def test_rerun_changes_nothing(self):
        self.check_stack("agree-rerun", {})
        done = subprocess.run([sys.executable, os.path.join(HERE, "provision.py"), "--template", TEMPLATE,
                               "--endpoint", self.endpoint, "--stack-name", "agree-rerun"],
                              capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("created ", done.stderr)
        self.assertNotIn("updated ", done.stderr)

    def test_alarm_notifications(self):
        """AlarmEmail subscribes to the stack's own alarm topic, or to the one AlarmTopicArn names."""
        email = "ops@example.com"
        stack, outputs = self.check_stack("agree-alarms", {"AlarmEmail": email})
        self.assertEqual(outputs["AlarmTopicArn"], stack.physical["AlarmTopic"])
        self.assertTrue(outputs["AlarmTopicArn"].endswith(":agree-alarms-alarms"), outputs)
        subs = self.sns.list_subscriptions_by_topic(TopicArn=outputs["AlarmTopicArn"])["Subscriptions"]
        self.assertEqual([(s["Protocol"], s["Endpoint"]) for s in subs], [("email", email)])

        own = self.sns.create_topic(Name="operators-own-alarms")["TopicArn"]
        stack, outputs = self.check_stack("agree-own-alarms", {"AlarmTopicArn": own, "AlarmEmail": email})
        self.assertEqual(outputs["AlarmTopicArn"], own)
        self.assertNotIn("AlarmTopic", stack.physical)
        self.assertFalse(any(t["TopicArn"].endswith(":agree-own-alarms-alarms")
                             for t in self.sns.list_topics()["Topics"]), "no topic of its own")
        subs = self.sns.list_subscriptions_by_topic(TopicArn=own)["Subscriptions"]
        self.assertEqual([(s["Protocol"], s["Endpoint"]) for s in subs], [("email", email)])

        _, outputs = self.check_stack("agree-no-email", {})
        self.assertEqual(self.sns.list_subscriptions_by_topic(TopicArn=outputs["AlarmTopicArn"])["Subscriptions"],
                         [], "no e-mail without AlarmEmail")

    def test_skips_are_summarised(self):
        """One line for the resources the emulator does not run; --verbose names each."""
        base = [sys.executable, os.path.join(HERE, "provision.py"), "--template", TEMPLATE,
                "--endpoint", self.endpoint, "--stack-name", "agree-summary"]
        quiet = subprocess.run(base, capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(quiet.returncode, 0, quiet.stderr)
        skip_lines = [line for line in quiet.stderr.splitlines() if "skip" in line]
        self.assertEqual(len(skip_lines), 2, quiet.stderr)  # the summary and the totals
        summary, totals = skip_lines
        skipped = int(totals.rsplit(", ", 1)[1].split()[0])  # "..., 28 skipped"
        template = provision.load_template(TEMPLATE)
        stack = provision.Stack(template, stack_name="agree-summary", region=REGION,
                                account_id=provision.DEFAULT_ACCOUNT_ID, parameters={})
        not_emulated = sum(1 for res in template["Resources"].values()
                           if res.get("Type") not in EMULATED or not self.active(stack, res))
        self.assertEqual(skipped, not_emulated, totals)
        self.assertIn(f"skipped {skipped} resources the emulator does not run (", summary)
        self.assertIn("Serverless::Function", summary)
        self.assertIn("--verbose", summary)
        verbose = subprocess.run(base + ["--verbose"], capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(verbose.returncode, 0, verbose.stderr)
        notes = [line for line in verbose.stderr.splitlines() if line.startswith("provision: skip ")]
        self.assertEqual(len(notes), skipped, verbose.stderr)
        self.assertNotIn("resources the emulator does not run", verbose.stderr)


if __name__ == "__main__":
    unittest.main()
