//! The template's alarms, held to what they watch. From `template.yaml`
//! alone: every dead-letter queue has an alarm that fires once it is not
//! empty, every function has Errors and Throttles alarms, every alarm
//! notifies the alarm topic, the gateway queue age alarm watches the
//! gateways' queue prefix, each deployed channel has a failed-rate alarm,
//! and the dashboard is JSON that charts every function, dead-letter queue
//! and table. On the emulator: a channel that refuses everything fills its
//! connector's dead-letter queue until that queue's alarm, as the template
//! declares it (metric, operator, threshold, queue), would fire on the
//! queue's own count, and before the failures it would not.
//!
//! The template is read by provisioning's own loader (`localstack/provision.py`,
//! in the pinned Python environment the emulator runs from), so the short
//! tags arrive in their long forms: `!GetAtt A.B` is `{"Fn::GetAtt": ["A", "B"]}`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use aws_sdk_sqs::types::QueueAttributeName;
use chat_e2e::channels::{Faults, faults};
use chat_e2e::cluster::Cluster;
use chat_e2e::{DEADLINE, emulator, scenarios, workspace_root};
use chat_proto::pb::MessageStatus;
use serde_json::{Value, json};

const TG: &str = "telegram:123456";

/// `template.yaml`, parsed with CloudFormation's tags.
#[derive(Debug)]
struct Template(Value);

impl Template {
    fn load() -> anyhow::Result<Self> {
        let root = workspace_root();
        let python = emulator::python();
        let script = "import json, sys\n\
                      sys.path.insert(0, sys.argv[1])\n\
                      import provision\n\
                      json.dump(provision.load_template(sys.argv[2]), sys.stdout)";
        let out = Command::new(&python)
            .args(["-c", script])
            .arg(root.join("localstack"))
            .arg(root.join("template.yaml"))
            .output()
            .with_context(|| format!("running {} (set CHAT_PYTHON to the emulator's environment)", python.display()))?;
        ensure!(out.status.success(), "loading template.yaml: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Self(serde_json::from_slice(&out.stdout).context("template.yaml as JSON")?))
    }

    /// `(logical id, resource)` of every resource of `kind`, in template order.
    fn of_type<'t>(&'t self, kind: &str) -> Vec<(&'t str, &'t Value)> {
        self.0["Resources"]
            .as_object()
            .map(|resources| {
                resources.iter().filter(|(_, r)| r["Type"] == kind).map(|(id, r)| (id.as_str(), r)).collect()
            })
            .unwrap_or_default()
    }

    fn resource(&self, id: &str) -> anyhow::Result<&Value> {
        let resource = &self.0["Resources"][id];
        ensure!(resource.is_object(), "no resource {id} in the template");
        Ok(resource)
    }

    fn alarms(&self) -> Vec<Alarm<'_>> {
        self.of_type("AWS::CloudWatch::Alarm")
            .into_iter()
            .map(|(id, r)| Alarm { id, props: &r["Properties"] })
            .collect()
    }

    /// A number as the template gives it: literally, or a parameter's default.
    fn number(&self, value: &Value) -> anyhow::Result<f64> {
        match value {
            Value::Number(n) => n.as_f64().context("a number"),
            Value::String(s) => s.parse().with_context(|| format!("{s:?} is not a number")),
            Value::Object(o) => {
                let name = o.get("Ref").and_then(Value::as_str).with_context(|| format!("not a number: {value}"))?;
                let parameter = &self.0["Parameters"][name];
                ensure!(parameter["Type"] == "Number", "parameter {name} is not a Number: {parameter}");
                self.number(&parameter["Default"])
            }
            _ => bail!("not a number: {value}"),
        }
    }

    /// The dead-letter queue of every queue with a redrive policy:
    /// `(queue, dead-letter queue)` logical ids.
    fn dead_letter_queues(&self) -> anyhow::Result<Vec<(&str, String)>> {
        let mut out = Vec::new();
        for (id, queue) in self.of_type("AWS::SQS::Queue") {
            let target = &queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"];
            if !target.is_null() {
                out.push((id, get_att(target, "Arn").with_context(|| format!("{id}'s dead-letter target"))?));
            }
        }
        Ok(out)
    }

    /// The queue a function's SQS event source reads.
    fn function_queue(&self, function: &str) -> anyhow::Result<String> {
        let events = self.resource(function)?["Properties"]["Events"].as_object().context("events")?;
        let queues: Vec<String> = events
            .values()
            .filter(|e| e["Type"] == "SQS")
            .map(|e| get_att(&e["Properties"]["Queue"], "Arn"))
            .collect::<anyhow::Result<_>>()?;
        match queues.as_slice() {
            [queue] => Ok(queue.clone()),
            other => bail!("{function} reads {} queues: {other:?}", other.len()),
        }
    }

    /// The physical name of a queue in stack `stack` (its `QueueName`).
    fn queue_name(&self, queue: &str, stack: &str) -> anyhow::Result<String> {
        let name = &self.resource(queue)?["Properties"]["QueueName"];
        let text = name["Fn::Sub"].as_str().or_else(|| name.as_str()).with_context(|| format!("{queue}: {name}"))?;
        let resolved = text.replace("${AWS::StackName}", stack);
        ensure!(!resolved.contains("${"), "{queue}'s name needs more than the stack name: {text}");
        Ok(resolved)
    }

    /// `(logical id, channel)` of every connector function.
    fn connectors(&self) -> Vec<(&str, &str)> {
        self.of_type("AWS::Serverless::Function")
            .into_iter()
            .filter_map(|(id, f)| Some((id, f["Properties"]["Environment"]["Variables"]["CHAT_CHANNEL"].as_str()?)))
            .collect()
    }
}

/// The resource an `Fn::GetAtt` of `attribute` names.
fn get_att(value: &Value, attribute: &str) -> anyhow::Result<String> {
    match value["Fn::GetAtt"].as_array().map(Vec::as_slice) {
        Some([Value::String(id), Value::String(attr)]) if attr == attribute => Ok(id.clone()),
        _ => bail!("expected !GetAtt <resource>.{attribute}, got {value}"),
    }
}

/// One `AWS::CloudWatch::Alarm`.
#[derive(Debug, Clone, Copy)]
struct Alarm<'t> {
    id: &'t str,
    props: &'t Value,
}

impl Alarm<'_> {
    /// A single-metric alarm on `namespace`/`metric` whose dimension `name`
    /// is `value`.
    fn watches(&self, namespace: &str, metric: &str, name: &str, value: &Value) -> bool {
        self.props["Namespace"] == namespace
            && self.props["MetricName"] == metric
            && self.props["Dimensions"]
                .as_array()
                .is_some_and(|dims| dims.iter().any(|d| d["Name"] == name && d["Value"] == *value))
    }

    /// Whether a data point of `value` breaches the alarm's threshold.
    fn breached_by(&self, template: &Template, value: f64) -> anyhow::Result<bool> {
        let threshold =
            template.number(&self.props["Threshold"]).with_context(|| format!("{}'s threshold", self.id))?;
        let operator = self.props["ComparisonOperator"].as_str().with_context(|| format!("{}'s operator", self.id))?;
        Ok(match operator {
            "GreaterThanThreshold" => value > threshold,
            "GreaterThanOrEqualToThreshold" => value >= threshold,
            "LessThanThreshold" => value < threshold,
            "LessThanOrEqualToThreshold" => value <= threshold,
            other => bail!("{}: {other} compares with an anomaly band, not a threshold", self.id),
        })
    }

    /// The alarm a single metric `namespace`/`metric` of dimension `name` =
    /// `value` has; exactly one.
    fn find<'t>(
        template: &'t Template,
        namespace: &str,
        metric: &str,
        name: &str,
        value: &Value,
    ) -> anyhow::Result<Alarm<'t>> {
        let found: Vec<Alarm<'t>> =
            template.alarms().into_iter().filter(|a| a.watches(namespace, metric, name, value)).collect();
        match found.as_slice() {
            [alarm] => Ok(*alarm),
            other => bail!(
                "{} alarms on {namespace} {metric} where {name} = {value}: {:?}",
                other.len(),
                other.iter().map(|a| a.id).collect::<Vec<_>>()
            ),
        }
    }
}

/// The queue attribute that stands for an `AWS/SQS` metric.
fn queue_attribute(metric: &str) -> anyhow::Result<QueueAttributeName> {
    Ok(match metric {
        "ApproximateNumberOfMessagesVisible" => QueueAttributeName::ApproximateNumberOfMessages,
        "ApproximateNumberOfMessagesNotVisible" => QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        "ApproximateNumberOfMessagesDelayed" => QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        other => bail!("no queue attribute stands for the SQS metric {other}"),
    })
}

async fn queue_value(sqs: &aws_sdk_sqs::Client, url: &str, attribute: &QueueAttributeName) -> anyhow::Result<f64> {
    let out = sqs.get_queue_attributes().queue_url(url).attribute_names(attribute.clone()).send().await?;
    let value = out.attributes().and_then(|a| a.get(attribute)).with_context(|| format!("{url} has no {attribute}"))?;
    value.parse().with_context(|| format!("{attribute} of {url}: {value:?}"))
}

#[test]
fn every_dead_letter_queue_has_an_alarm_that_fires_once_it_is_not_empty() -> anyhow::Result<()> {
    let template = Template::load()?;
    let dlqs = template.dead_letter_queues()?;
    ensure!(dlqs.len() >= 5, "persist, three connectors and fallback redrive: {dlqs:?}");
    for (queue, dlq) in &dlqs {
        let name = json!({"Fn::GetAtt": [dlq, "QueueName"]});
        let alarm = Alarm::find(&template, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", &name)
            .with_context(|| format!("{queue}'s dead-letter queue {dlq}"))?;
        ensure!(alarm.breached_by(&template, 1.0)?, "{}: one dead letter does not fire it", alarm.id);
        ensure!(!alarm.breached_by(&template, 0.0)?, "{}: an empty queue fires it", alarm.id);
        ensure!(alarm.props["TreatMissingData"] == "notBreaching", "{}: an idle queue reports nothing", alarm.id);
    }
    Ok(())
}

#[test]
fn every_function_has_errors_and_throttles_alarms() -> anyhow::Result<()> {
    let template = Template::load()?;
    let functions = template.of_type("AWS::Serverless::Function");
    ensure!(functions.len() >= 7, "functions {functions:?}");
    for (function, _) in functions {
        for metric in ["Errors", "Throttles"] {
            let alarm = Alarm::find(&template, "AWS/Lambda", metric, "FunctionName", &json!({"Ref": function}))?;
            ensure!(alarm.breached_by(&template, 1.0)?, "{}: one {metric} does not fire it", alarm.id);
            ensure!(!alarm.breached_by(&template, 0.0)?, "{}: fires without {metric}", alarm.id);
            ensure!(alarm.props["Statistic"] == "Sum", "{}: counts {metric} (Sum)", alarm.id);
        }
    }
    Ok(())
}

#[test]
fn every_alarm_notifies_the_alarm_topic() -> anyhow::Result<()> {
    let template = Template::load()?;
    let topic = json!({"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]});
    ensure!(template.resource("AlarmTopic")?["Condition"] == "CreateAlarmTopic", "the stack's own topic is optional");
    ensure!(template.0["Parameters"]["AlarmTopicArn"]["Default"] == "", "AlarmTopicArn defaults to none");
    let alarms = template.alarms();
    // Dead-letter queues, Errors and Throttles per function, gateway queue age.
    let (dlqs, functions) = (template.dead_letter_queues()?.len(), template.of_type("AWS::Serverless::Function").len());
    ensure!(alarms.len() > dlqs + 2 * functions, "{} alarms", alarms.len());
    for alarm in alarms {
        for actions in ["AlarmActions", "OKActions"] {
            ensure!(alarm.props[actions] == json!([topic]), "{}.{actions}: {}", alarm.id, alarm.props[actions]);
        }
    }
    let email = template.resource("AlarmEmailSubscription")?;
    ensure!(email["Condition"] == "HasAlarmEmail" && email["Properties"]["TopicArn"] == topic, "{email}");
    Ok(())
}

#[test]
fn gateway_queue_age_alarm_watches_the_gateways_queues() -> anyhow::Result<()> {
    let template = Template::load()?;
    let janitor = template.resource("JanitorFunction")?;
    let prefix = janitor["Properties"]["Environment"]["Variables"]["CHAT_QUEUE_PREFIX"]["Fn::Sub"]
        .as_str()
        .context("the janitor's CHAT_QUEUE_PREFIX")?;
    let alarm = template.resource("GatewayQueueAgeAlarm")?;
    let metrics = alarm["Properties"]["Metrics"].as_array().context("a metrics query")?;
    let [query] = metrics.as_slice() else { bail!("one Metrics Insights query: {metrics:?}") };
    let expression = query["Expression"]["Fn::Sub"].as_str().context("the query")?;
    ensure!(
        expression.starts_with("SELECT MAX(ApproximateAgeOfOldestMessage)")
            && expression.contains(r#"FROM SCHEMA("AWS/SQS", QueueName)"#)
            && expression.contains(&format!("WHERE QueueName LIKE '{prefix}%'")),
        "{expression}"
    );
    ensure!(query["Period"] == 60 && query["ReturnData"] == true, "{query}");
    let alarm = Alarm { id: "GatewayQueueAgeAlarm", props: &alarm["Properties"] };
    let threshold = template.number(&json!({"Ref": "GatewayQueueMaxAgeSeconds"}))?;
    ensure!(alarm.breached_by(&template, threshold + 1.0)? && !alarm.breached_by(&template, threshold)?, "{alarm:?}");
    Ok(())
}

#[test]
fn each_deployed_channel_has_a_failed_rate_alarm() -> anyhow::Result<()> {
    let template = Template::load()?;
    let connectors = template.connectors();
    ensure!(connectors.len() == 3, "{connectors:?}");
    for (function, channel) in connectors {
        let found: Vec<&Value> = template
            .of_type("AWS::CloudWatch::Alarm")
            .into_iter()
            .map(|(_, a)| &a["Properties"])
            .filter(|a| {
                a["Metrics"].as_array().is_some_and(|m| {
                    m.iter().any(|q| {
                        q["MetricStat"]["Metric"]["Dimensions"][0] == json!({"Name": "channel", "Value": channel})
                    })
                })
            })
            .collect();
        let [alarm] = found.as_slice() else { bail!("{function}: {} failed-rate alarms", found.len()) };
        let mut outcomes = BTreeSet::new();
        let mut ratio = None;
        for query in alarm["Metrics"].as_array().context("metrics")? {
            let metric = &query["MetricStat"]["Metric"];
            if metric.is_null() {
                ratio = query["Expression"].as_str();
                continue;
            }
            ensure!(
                metric["Namespace"] == "ChatPlatform"
                    && metric["MetricName"] == "chat_connector_sends_total"
                    && query["MetricStat"]["Period"] == 300
                    && query["MetricStat"]["Stat"] == "Sum",
                "{channel}: {query}"
            );
            let outcome = metric["Dimensions"][1]["Value"].as_str().context("outcome")?;
            outcomes.insert(query["Id"].as_str().filter(|id| *id == outcome).context("ids name outcomes")?);
        }
        ensure!(outcomes == BTreeSet::from(["delivered", "failed"]), "{channel}: {outcomes:?}");
        ensure!(
            ratio == Some("FILL(failed, 0) / (FILL(delivered, 0) + FILL(failed, 0))"),
            "{channel}: failed / (delivered + failed), got {ratio:?}"
        );
        ensure!(alarm["Threshold"] == json!({"Ref": "ConnectorFailedRateThreshold"}), "{channel}: {alarm}");
        ensure!(alarm["TreatMissingData"] == "notBreaching", "{channel}: no sends is not a failure");
    }
    Ok(())
}

#[test]
fn dashboard_is_json_and_charts_every_function_queue_and_table() -> anyhow::Result<()> {
    let template = Template::load()?;
    let dashboards = template.of_type("AWS::CloudWatch::Dashboard");
    let [(_, dashboard)] = dashboards.as_slice() else { bail!("{} dashboards", dashboards.len()) };
    let body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"].as_str().context("DashboardBody: !Sub")?;
    let mut charted: Vec<String> =
        template.of_type("AWS::Serverless::Function").iter().map(|(id, _)| format!("${{{id}}}")).collect();
    charted.extend(template.dead_letter_queues()?.into_iter().map(|(_, dlq)| format!("${{{dlq}.QueueName}}")));
    charted.extend(template.of_type("AWS::DynamoDB::Table").iter().map(|(id, _)| format!("${{{id}}}")));
    charted.push("${EventsTopic.TopicName}".into());
    for name in &charted {
        ensure!(body.contains(name.as_str()), "the dashboard does not chart {name}");
    }
    // What !Sub would make of it: Number parameters are bare numbers.
    let mut resolved = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').context("an unclosed ${")? + start;
        let name = &rest[start + 2..end];
        let parameter = &template.0["Parameters"][name];
        resolved.push_str(&rest[..start]);
        if parameter["Type"] == "Number" {
            resolved.push_str(&template.number(&parameter["Default"])?.to_string());
        } else {
            resolved.push_str(&name.replace([':', '.'], "-"));
        }
        rest = &rest[end + 1..];
    }
    resolved.push_str(rest);
    let parsed: Value = serde_json::from_str(&resolved).context("the dashboard body is not JSON")?;
    let widgets = parsed["widgets"].as_array().context("widgets")?;
    ensure!(widgets.len() >= 8, "{} widgets", widgets.len());
    for widget in widgets {
        let metrics = widget["properties"]["metrics"].as_array();
        ensure!(metrics.is_some_and(|m| !m.is_empty()), "a widget without metrics: {widget}");
    }
    Ok(())
}

#[tokio::test]
async fn a_channel_that_refuses_everything_trips_its_dead_letter_alarm() -> anyhow::Result<()> {
    let template = Template::load()?;
    // Connector function -> the queue it reads -> that queue's dead-letter
    // queue -> the alarm on it.
    let (function, _) = template
        .connectors()
        .into_iter()
        .find(|(_, channel)| *channel == "telegram")
        .context("a telegram connector in the template")?;
    let queue = template.function_queue(function)?;
    let (_, dlq) = template
        .dead_letter_queues()?
        .into_iter()
        .find(|(q, _)| *q == queue)
        .with_context(|| format!("{queue} has no dead-letter queue"))?;
    let name = json!({"Fn::GetAtt": [dlq, "QueueName"]});
    let alarm = Alarm::find(&template, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", &name)?;
    let metric = alarm.props["MetricName"].as_str().context("metric")?;
    let attribute = queue_attribute(metric)?;

    let mut cluster =
        Cluster::aws_custom(1, &[], &["ConnectorVisibilityTimeoutSeconds=1", "ConnectorMaxReceiveCount=2"]).await?;
    // Short invocations, and the queue's maxReceiveCount as on AWS. Calls
    // shorter than the invocation, or the connector would never start one
    // (its default 5 s does not fit in 2 s) and the channel's refusals would
    // not be what dead-letters the sends.
    let env = [
        ("CHAT_FUNCTION_TIMEOUT_SECS", "2"),
        ("CHAT_CONNECTOR_MAX_RECEIVE_COUNT", "2"),
        ("CHAT_CONNECTOR_REQUEST_TIMEOUT_MS", "500"),
    ];
    let sim = cluster.start_channels(&["telegram"], &env).await?;
    sim.faults(Faults { fail_next: Some(vec![503; 500]), ..faults("telegram") }).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq_name = template.queue_name(&dlq, &cluster.stack)?;
    let url = sqs.get_queue_url().queue_name(&dlq_name).send().await?.queue_url().context("queue url")?.to_owned();
    ensure!(
        url == cluster.output("CHAT_CONNECTOR_TELEGRAM_DEAD_LETTER_QUEUE_URL")?,
        "the alarm's queue {dlq_name} is the telegram connector's dead-letter queue"
    );

    let before = queue_value(&sqs, &url, &attribute).await?;
    ensure!(!alarm.breached_by(&template, before)?, "{} fires before any failure ({metric} = {before})", alarm.id);

    let mut alice = cluster.connect(0, "alice").await?;
    let room = cluster.public_room(&alice.user, "alarm-").await?;
    alice.join(&room).await?;
    let added = cluster.add_member(0, &alice.user, &room, TG).await?;
    ensure!(matches!(added, Ok(true)), "adding {TG}: {added:?}");
    let sends = 3;
    for i in 1..=sends {
        alice.send(&room, &format!("refused-{i}"), "into the void").await?;
    }
    scenarios::accepted(&mut alice, sends).await?;
    alice.wait_receipt(TG, MessageStatus::Failed, 1).await?;

    // Every send gives up after two deliveries and is redriven.
    let deadline = tokio::time::Instant::now() + 2 * DEADLINE;
    let value = loop {
        let value = queue_value(&sqs, &url, &attribute).await?;
        if value >= sends as f64 {
            break value;
        }
        ensure!(alarm.breached_by(&template, value)? == (value > 0.0), "{}: {metric} = {value}", alarm.id);
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{dlq_name} holds {value} of the {sends} refused sends after {:?}",
            2 * DEADLINE
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(value == sends as f64, "{value} dead letters for {sends} sends");
    ensure!(alarm.breached_by(&template, value)?, "{} would not fire with {metric} = {value}", alarm.id);
    let statuses: BTreeSet<u16> = sim.sent("telegram").await?.iter().map(|s| s.status).collect();
    ensure!(statuses == BTreeSet::from([503]), "the channel was called and refused every send: {statuses:?}");
    Ok(())
}
