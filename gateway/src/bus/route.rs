//! Member routing: an event goes to the queues of the gateways that hold a
//! member's stream, not to every gateway through the topic.
//!
//! - A gateway registers its route (its instance id and a boot nonce) on a
//!   conversation ([`Router::register`]) before a join reads the
//!   conversation's latest seq, and the seq counter's update returns the
//!   routes with each seq: a message numbered after a registration always
//!   names that gateway, and one numbered before it is at or below the seq
//!   the join read (resume's backfill covers it, as for any earlier
//!   message). A join racing a send therefore loses nothing.
//! - The sender's gateway delivers its own events to its hub at once and
//!   sends them to the other routes' queues (`SendMessageBatch`, ten per
//!   call); what the functions need (messages, receipts) still goes to the
//!   topic, marked routed so the gateway queues' subscriptions skip it.
//! - Every other event (membership, presence, typing, receipts) reads the
//!   routes afresh (one consistent read per conversation of a publish
//!   batch), after whatever write caused it: a gateway that registered
//!   before that read is in it, and one that registers after it reads the
//!   state the event describes when its join does.
//! - An event a route's queue cannot take goes through the topic to every
//!   gateway instead, so nothing is lost to a sick or vanished queue. A
//!   queue found gone (its gateway stopped, or crashed and the janitor
//!   reaped it), or tagged with another boot (its gateway restarted under
//!   the same instance id), is looked up again a second later; confirmed,
//!   its route is left out of every send and taken out of the
//!   conversations it was found in.
//! - A registration or unregistration that failed may or may not have been
//!   applied: it is marked unsure, and the sweep adds the route again while
//!   a member streams here, or removes it.
//! - A conversation that has had no member streaming here for the linger is
//!   unregistered; one with more routes than the limit overflows to the
//!   topic for good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chat_aws::dynamo::{DynamoStore, Registration};
use chat_aws::sns::SnsPublisher;
use chat_core::bus::{BatchSink, BusError};
use chat_core::envelope::{Envelope, Event};
use chat_core::store::Routes;
use futures::StreamExt;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::Inbox;
use crate::hub::Hub;

/// SQS `SendMessageBatch` takes at most ten entries of at most 256 KiB in
/// all.
const SEND_BATCH_MAX: usize = 10;
const SEND_BATCH_BYTES: usize = 256 * 1024;

/// Separates a route's instance id from its boot nonce.
const ROUTE_SEPARATOR: char = '~';

/// This gateway's route: its instance id (which names its queue) and a
/// nonce of this start, so a gateway restarted under the same id is a new
/// route and healing the old one never removes the new.
pub(crate) fn route_id(gateway_id: &str, boot: &str) -> String {
    format!("{gateway_id}{ROUTE_SEPARATOR}{boot}")
}

/// The instance id a route names.
pub(crate) fn route_gateway(route: &str) -> &str {
    route.split_once(ROUTE_SEPARATOR).map_or(route, |(gateway, _)| gateway)
}

/// The boot nonce a route names (its queue is tagged with it).
pub(crate) fn route_boot(route: &str) -> Option<&str> {
    route.split_once(ROUTE_SEPARATOR).map(|(_, boot)| boot)
}

/// Whether the functions consume this event (from the topic): a receipt
/// its publisher recorded already (a READ) concerns none of them, and a
/// message only the connectors (its external recipients) or the offline
/// fallback (a member with a linked channel other than its sender) act on.
fn for_functions(event: &Event, routes: &Routes) -> bool {
    match event {
        Event::Receipt(receipt) => !receipt.recorded,
        Event::Message(m) => {
            !m.external_recipients.is_empty() || routes.fallback_members.iter().any(|member| *member != m.sender)
        }
        Event::Fallback(_) => true,
        _ => false,
    }
}

/// Routes known for one conversation: those the store held when its seq
/// was `seq`.
#[derive(Debug, Clone)]
struct Known {
    seq: u64,
    routes: Routes,
}

/// What this gateway knows of conversations' routes (pure state).
#[derive(Debug, Default)]
pub(crate) struct RouteBook {
    known: HashMap<String, Known>,
}

impl RouteBook {
    /// Keeps the routes the store held at `seq`, unless newer ones are known.
    pub(crate) fn observe(&mut self, conversation_id: &str, seq: u64, routes: &Routes) {
        match self.known.get_mut(conversation_id) {
            Some(known) if known.seq > seq => {}
            Some(known) => *known = Known { seq, routes: routes.clone() },
            None => {
                self.known.insert(conversation_id.to_owned(), Known { seq, routes: routes.clone() });
            }
        }
    }

    /// The routes an event may go by without asking the store: a message's,
    /// when routes read at or after its seq are known. Nothing else: any
    /// other event reads them after the write that caused it.
    pub(crate) fn routes_for(&self, envelope: &Envelope) -> Option<&Routes> {
        let known = self.known.get(&envelope.conversation_id)?;
        let usable = matches!(&envelope.event, Event::Message(m) if known.seq >= m.seq);
        usable.then_some(&known.routes)
    }

    /// Forgets a route everywhere (its queue is gone).
    pub(crate) fn forget_route(&mut self, route: &str) {
        for known in self.known.values_mut() {
            known.routes.gateways.retain(|r| r != route);
        }
    }

    /// Forgets what is known of a conversation (no member streams here).
    pub(crate) fn forget_conversation(&mut self, conversation_id: &str) {
        self.known.remove(conversation_id);
    }

    /// Keeps only the conversations `keep` says; a message sent here
    /// afterwards reads its routes once.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.known.retain(|conversation_id, _| keep(conversation_id));
    }
}

/// Where one event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Through the topic to every gateway (the conversation overflowed, or
    /// its routes could not be read).
    pub(crate) everyone: bool,
    /// Through the topic, marked routed, for the functions.
    pub(crate) functions: bool,
    /// Straight to these routes' queues (this gateway excluded).
    pub(crate) routes: Vec<String>,
}

/// Where an event goes, given the routes to use (`None`: unknown).
pub(crate) fn plan(envelope: &Envelope, routes: Option<&Routes>, own_route: &str) -> Plan {
    match routes {
        Some(routes) if !routes.overflowed => Plan {
            everyone: false,
            functions: for_functions(&envelope.event, routes),
            routes: routes.gateways.iter().filter(|r| r.as_str() != own_route).cloned().collect(),
        },
        // Past the route limit a receipt goes to the functions that record
        // it and to this gateway's streams, not to every gateway: in a room
        // of thousands each member's reads would otherwise reach every
        // gateway. Its members read statuses from `GetMessageStatus`.
        Some(routes) if matches!(envelope.event, Event::Receipt(_)) => {
            Plan { everyone: false, functions: for_functions(&envelope.event, routes), routes: Vec::new() }
        }
        _ => Plan { everyone: true, functions: false, routes: Vec::new() },
    }
}

/// Splits entries of these sizes into `SendMessageBatch` calls: at most
/// ten entries and 256 KiB each, in order.
pub(crate) fn send_batches(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        if i > start && (i - start == SEND_BATCH_MAX || bytes + size > SEND_BATCH_BYTES) {
            batches.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// A conversation this gateway registered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registered {
    No,
    Yes {
        idle_since: Option<Instant>,
    },
    /// A registration or unregistration failed, and may have been applied
    /// or not: the next join registers again (adding is idempotent), the
    /// sweep settles it either way meanwhile.
    Unsure,
    /// The conversation routes through the topic: nothing to register.
    Overflowed,
}

/// Member routing's I/O: registrations on the conversations table, route
/// reads, queue URLs.
#[derive(Debug)]
pub(crate) struct Router {
    store: Arc<DynamoStore>,
    /// With the send path's short timeouts (not the pollers' long ones).
    sqs: aws_sdk_sqs::Client,
    queue_prefix: String,
    route: String,
    limit: usize,
    linger: Duration,
    book: Mutex<RouteBook>,
    /// Per conversation, serialising its registration and unregistration.
    registrations: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Registered>>>>,
    /// Queue URLs of live routes.
    urls: Mutex<HashMap<String, String>>,
    /// Routes whose queue is confirmed gone (a route names one start of a
    /// gateway, so a dead one never comes back).
    dead: Mutex<HashSet<String>>,
    /// Routes being checked, with the conversations they were found in.
    checking: Mutex<HashMap<String, Vec<String>>>,
}

/// Why an event could not go straight to a route's queue.
enum SendFailure {
    /// The queue is gone, or belongs to a later start of its gateway.
    Gone,
    /// Anything else.
    Failed(String),
}

fn queue_gone<E: ProvideErrorMetadata>(err: &E) -> bool {
    matches!(err.code(), Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue"))
}

/// How long a queue found gone waits before it is looked up again to
/// confirm (a queue just created may not show everywhere at once).
const CONFIRM_GONE_AFTER: Duration = Duration::from_secs(1);
/// Routes unregistered at once when a gateway stops.
const UNREGISTER_CONCURRENCY: usize = 16;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    pub(crate) fn new(
        store: Arc<DynamoStore>,
        sqs: aws_sdk_sqs::Client,
        queue_prefix: String,
        route: String,
        limit: usize,
        linger: Duration,
    ) -> Self {
        Self {
            store,
            sqs,
            queue_prefix,
            route,
            limit,
            linger,
            book: Mutex::new(RouteBook::default()),
            registrations: Mutex::new(HashMap::new()),
            urls: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashSet::new()),
            checking: Mutex::new(HashMap::new()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, RouteBook> {
        lock(&self.book)
    }

    fn registration(&self, conversation_id: &str) -> Arc<tokio::sync::Mutex<Registered>> {
        lock(&self.registrations)
            .entry(conversation_id.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Registered::No)))
            .clone()
    }

    /// Adds this gateway's route to the conversation; the state it leaves.
    async fn add(&self, conversation_id: &str) -> Result<Registered, chat_core::store::StoreError> {
        match self.store.register_route(conversation_id, &self.route, self.limit).await {
            Ok(Registration::Registered) => {
                tracing::debug!(conversation_id, route = self.route, "route registered");
                Ok(Registered::Yes { idle_since: None })
            }
            Ok(Registration::Overflowed) => Ok(Registered::Overflowed),
            // The join's own read refuses it.
            Ok(Registration::NoConversation) => Ok(Registered::No),
            Err(e) => Err(e),
        }
    }

    /// Makes sure this gateway receives the conversation's events; call it
    /// after subscribing the joining stream and before reading the
    /// conversation's latest seq.
    pub(crate) async fn register(&self, conversation_id: &str) -> Result<(), chat_core::store::StoreError> {
        let registration = self.registration(conversation_id);
        let mut state = registration.lock().await;
        match *state {
            Registered::Yes { .. } => *state = Registered::Yes { idle_since: None },
            Registered::Overflowed => {}
            Registered::No | Registered::Unsure => match self.add(conversation_id).await {
                Ok(next) => *state = next,
                Err(e) => {
                    *state = Registered::Unsure;
                    return Err(e);
                }
            },
        }
        Ok(())
    }

    /// Keeps the routes the store returned with `seq`.
    pub(crate) fn observe(&self, conversation_id: &str, seq: u64, routes: &Routes) {
        self.book().observe(conversation_id, seq, routes);
    }

    /// Settles one registration: unregisters a conversation no member has
    /// streamed here for the linger, and resolves an unsure one (added
    /// again while a member streams here, removed otherwise).
    async fn settle(&self, conversation_id: &str, state: &mut Registered, idle: bool, now: Instant) {
        let remove = match *state {
            Registered::Yes { .. } if !idle => {
                *state = Registered::Yes { idle_since: None };
                false
            }
            Registered::Yes { idle_since: None } => {
                *state = Registered::Yes { idle_since: Some(now) };
                false
            }
            Registered::Yes { idle_since: Some(since) } => now.saturating_duration_since(since) >= self.linger,
            Registered::Unsure if !idle => {
                match self.add(conversation_id).await {
                    Ok(next) => *state = next,
                    Err(e) => tracing::warn!(conversation_id, error = %e, "could not register a route; trying again"),
                }
                false
            }
            Registered::Unsure => true,
            Registered::No | Registered::Overflowed => false,
        };
        if remove {
            match self.store.unregister_route(conversation_id, &self.route).await {
                Ok(()) => {
                    tracing::debug!(conversation_id, route = self.route, "route unregistered");
                    *state = Registered::No;
                }
                Err(e) => {
                    tracing::warn!(conversation_id, error = %e, "could not unregister a route; trying again");
                    *state = Registered::Unsure;
                }
            }
        }
    }

    /// Settles every registration (see [`Router::settle`]).
    async fn sweep(&self, hub: &Hub) {
        let now = Instant::now();
        // Routes kept for conversations no stream here hears any more (a
        // unary send's) would otherwise pile up.
        self.book().retain(|conversation_id| hub.has_local_members(conversation_id));
        let registrations: Vec<(String, Arc<tokio::sync::Mutex<Registered>>)> =
            lock(&self.registrations).iter().map(|(c, r)| (c.clone(), r.clone())).collect();
        for (conversation_id, registration) in registrations {
            // Held across the store call: a join waits for the
            // unregistration, then registers again.
            let mut state = registration.lock().await;
            let idle = !hub.has_local_members(&conversation_id);
            self.settle(&conversation_id, &mut state, idle, now).await;
            let done = *state == Registered::No || (*state == Registered::Overflowed && idle);
            drop(state);
            if done {
                self.book().forget_conversation(&conversation_id);
                let mut registrations = lock(&self.registrations);
                // Only when no join holds it.
                if registrations.get(&conversation_id).is_some_and(|r| Arc::strong_count(r) == 2) {
                    registrations.remove(&conversation_id);
                }
            }
        }
    }

    /// Sweeps registrations until `stop`.
    pub(crate) async fn maintain(self: Arc<Self>, hub: Arc<Hub>, stop: CancellationToken) {
        let period = (self.linger / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => self.sweep(&hub).await,
            }
        }
    }

    /// Unregisters every conversation this gateway registered on (its
    /// sessions have ended; its queue is about to go).
    pub(crate) async fn unregister_all(&self) {
        let registrations: Vec<(String, Arc<tokio::sync::Mutex<Registered>>)> =
            lock(&self.registrations).iter().map(|(c, r)| (c.clone(), r.clone())).collect();
        futures::stream::iter(registrations)
            .for_each_concurrent(UNREGISTER_CONCURRENCY, |(conversation_id, registration)| async move {
                let mut state = registration.lock().await;
                if matches!(*state, Registered::Yes { .. } | Registered::Unsure) {
                    if let Err(e) = self.store.unregister_route(&conversation_id, &self.route).await {
                        tracing::warn!(conversation_id, error = %e, "route left behind; the first send to find its queue gone removes it");
                    }
                    *state = Registered::No;
                }
            })
            .await;
    }

    /// Where each event goes: the routes known, else read (once per
    /// conversation of the batch); routes confirmed dead left out.
    async fn plans(&self, envelopes: &[Envelope]) -> Vec<Plan> {
        let missing: Vec<String> = {
            let book = self.book();
            let mut missing: Vec<String> =
                envelopes.iter().filter(|e| book.routes_for(e).is_none()).map(|e| e.conversation_id.clone()).collect();
            missing.sort();
            missing.dedup();
            missing
        };
        let reads = join_all(missing.iter().map(|c| self.store.read_routes(c))).await;
        let mut read: HashMap<&str, Routes> = HashMap::new();
        for (conversation_id, result) in missing.iter().zip(reads) {
            match result {
                Ok(Some((seq, routes))) => {
                    self.book().observe(conversation_id, seq, &routes);
                    read.insert(conversation_id, routes);
                }
                Ok(None) => {
                    read.insert(conversation_id, Routes::default());
                }
                Err(e) => tracing::warn!(conversation_id, error = %e, "routes unreadable; publishing to every gateway"),
            }
        }
        let mut left_out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let plans = {
            let book = self.book();
            let dead = lock(&self.dead);
            envelopes
                .iter()
                .map(|e| {
                    let routes = read.get(e.conversation_id.as_str()).or_else(|| book.routes_for(e));
                    let mut plan = plan(e, routes, &self.route);
                    plan.routes.retain(|r| {
                        let live = !dead.contains(r);
                        if !live {
                            left_out.entry(r.clone()).or_default().push(e.conversation_id.clone());
                        }
                        live
                    });
                    plan
                })
                .collect()
        };
        // A dead route still in a conversation's item: taken out (again,
        // harmlessly, until the item says so).
        for (route, mut conversations) in left_out {
            conversations.sort();
            conversations.dedup();
            self.remove_route(&route, conversations);
        }
        plans
    }

    /// A route's queue URL, if its queue exists and belongs to this start
    /// of its gateway (a gateway restarted under the same instance id finds
    /// its queue again, tagged with its new boot).
    async fn lookup(&self, route: &str) -> Result<String, SendFailure> {
        let name = format!("{}{}", self.queue_prefix, route_gateway(route));
        let url = match self.sqs.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().unwrap_or_default().to_owned(),
            Err(e) if e.as_service_error().is_some_and(queue_gone) => return Err(SendFailure::Gone),
            Err(e) => return Err(SendFailure::Failed(chat_aws::error::describe(&e))),
        };
        let tags = match self.sqs.list_queue_tags().queue_url(&url).send().await {
            Ok(out) => out.tags,
            Err(e) if e.as_service_error().is_some_and(queue_gone) => return Err(SendFailure::Gone),
            Err(e) => return Err(SendFailure::Failed(chat_aws::error::describe(&e))),
        };
        let boot = tags.as_ref().and_then(|t| t.get(chat_aws::queue::TAG_BOOT));
        match (boot, route_boot(route)) {
            (Some(tagged), Some(named)) if tagged != named => Err(SendFailure::Gone),
            _ => Ok(url),
        }
    }

    async fn queue_url(&self, route: &str) -> Result<String, SendFailure> {
        if let Some(url) = lock(&self.urls).get(route) {
            return Ok(url.clone());
        }
        let url = self.lookup(route).await?;
        // Another route on the same queue is an earlier start of this
        // gateway (the queue's tag names this one): dead.
        let earlier: Vec<String> = {
            let mut urls = lock(&self.urls);
            let earlier: Vec<String> =
                urls.iter().filter(|(r, u)| **u == url && r.as_str() != route).map(|(r, _)| r.clone()).collect();
            for r in &earlier {
                urls.remove(r);
            }
            urls.insert(route.to_owned(), url.clone());
            earlier
        };
        for r in earlier {
            tracing::info!(
                route = r,
                restarted_as = route,
                "a gateway restarted under its instance id; its earlier route is dead"
            );
            lock(&self.dead).insert(r.clone());
            self.book().forget_route(&r);
        }
        Ok(url)
    }

    /// Sends events to one route's queue; one outcome per event.
    async fn send_to(&self, route: &str, envelopes: &[&Envelope]) -> Vec<Result<(), SendFailure>> {
        let url = match self.queue_url(route).await {
            Ok(url) => url,
            Err(SendFailure::Gone) => return envelopes.iter().map(|_| Err(SendFailure::Gone)).collect(),
            Err(SendFailure::Failed(detail)) => {
                return envelopes.iter().map(|_| Err(SendFailure::Failed(detail.clone()))).collect();
            }
        };
        let bodies: Vec<String> = envelopes.iter().map(|e| e.encode()).collect();
        let sizes: Vec<usize> = bodies.iter().map(String::len).collect();
        let mut outcomes: Vec<Result<(), SendFailure>> = Vec::with_capacity(envelopes.len());
        for range in send_batches(&sizes) {
            let entries: Result<Vec<_>, _> = range
                .clone()
                .map(|i| SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(&bodies[i]).build())
                .collect();
            let entries = match entries {
                Ok(entries) => entries,
                Err(e) => {
                    outcomes.extend(range.map(|_| Err(SendFailure::Failed(e.to_string()))));
                    continue;
                }
            };
            let sent = self.sqs.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await;
            match sent {
                Ok(out) => {
                    let failed: HashMap<String, String> =
                        out.failed().iter().map(|f| (f.id().to_owned(), f.code().to_owned())).collect();
                    outcomes.extend(range.map(|i| match failed.get(&i.to_string()) {
                        Some(code) => Err(SendFailure::Failed(format!("SQS SendMessageBatch entry: {code}"))),
                        None => Ok(()),
                    }));
                }
                Err(e) if e.as_service_error().is_some_and(queue_gone) => {
                    lock(&self.urls).remove(route);
                    outcomes.extend(range.map(|_| Err(SendFailure::Gone)));
                }
                Err(e) => {
                    let detail = chat_aws::error::describe(&e);
                    outcomes.extend(range.map(|_| Err(SendFailure::Failed(detail.clone()))));
                }
            }
        }
        outcomes
    }

    /// A route's queue was found gone: looked up again after a moment to
    /// confirm, then left out of every plan and taken out of the
    /// conversations it was found in.
    fn check_gone(self: &Arc<Self>, route: &str, conversations: Vec<String>) {
        if lock(&self.dead).contains(route) {
            self.remove_route(route, conversations);
            return;
        }
        {
            let mut checking = lock(&self.checking);
            if let Some(found_in) = checking.get_mut(route) {
                found_in.extend(conversations);
                return;
            }
            checking.insert(route.to_owned(), conversations);
        }
        let (router, route) = (self.clone(), route.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(CONFIRM_GONE_AFTER).await;
            let gone = matches!(router.lookup(&route).await, Err(SendFailure::Gone));
            let mut found_in = lock(&router.checking).remove(&route).unwrap_or_default();
            if gone {
                lock(&router.dead).insert(route.clone());
                router.book().forget_route(&route);
                found_in.sort();
                found_in.dedup();
                router.remove_route(&route, found_in);
            } else {
                tracing::info!(route, "a queue found gone is there after all; its route stays");
            }
        });
    }

    /// Takes a dead route out of conversations' routes.
    fn remove_route(&self, route: &str, conversations: Vec<String>) {
        metrics::counter!("chat_routes_healed_total").increment(conversations.len() as u64);
        let (store, route) = (self.store.clone(), route.to_owned());
        tokio::spawn(async move {
            for conversation_id in conversations {
                match store.unregister_route(&conversation_id, &route).await {
                    Ok(()) => tracing::info!(conversation_id, route, "dead route removed"),
                    Err(e) => tracing::warn!(conversation_id, route, error = %e, "could not remove a dead route"),
                }
            }
        });
    }
}

/// The sink behind the gateway's batching publisher under member routing.
#[derive(Debug)]
pub(crate) struct RoutedSink {
    router: Arc<Router>,
    /// This gateway's hub: its own events are delivered here at once.
    inbox: Arc<dyn Inbox>,
    /// The topic, events marked routed (for the functions).
    functions: SnsPublisher,
    /// The topic, unmarked (every gateway and the functions).
    everyone: SnsPublisher,
}

impl RoutedSink {
    pub(crate) fn new(router: Arc<Router>, inbox: Arc<dyn Inbox>, sns: aws_sdk_sns::Client, topic_arn: String) -> Self {
        let everyone = SnsPublisher::new(sns, topic_arn);
        Self { router, inbox, functions: everyone.clone().routed(), everyone }
    }

    async fn publish_to(
        &self,
        publisher: &SnsPublisher,
        envelopes: &[Envelope],
        picked: &[usize],
    ) -> Vec<Result<(), BusError>> {
        if picked.is_empty() {
            return Vec::new();
        }
        let chosen: Vec<Envelope> = picked.iter().map(|&i| envelopes[i].clone()).collect();
        publisher.publish_batch(&chosen).await
    }
}

#[async_trait]
impl BatchSink for RoutedSink {
    async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), BusError>> {
        let now = Instant::now();
        for envelope in envelopes {
            self.inbox.receive(envelope.clone(), now);
        }
        let plans = self.router.plans(envelopes).await;
        let everyone: Vec<usize> = (0..envelopes.len()).filter(|&i| plans[i].everyone).collect();
        let functions: Vec<usize> = (0..envelopes.len()).filter(|&i| plans[i].functions).collect();
        let mut by_route: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, plan) in plans.iter().enumerate() {
            for route in &plan.routes {
                by_route.entry(route.as_str()).or_default().push(i);
            }
        }
        let direct = join_all(by_route.iter().map(|(route, picked)| async move {
            let chosen: Vec<&Envelope> = picked.iter().map(|&i| &envelopes[i]).collect();
            (*route, picked, self.router.send_to(route, &chosen).await)
        }));
        let (direct, to_everyone, to_functions) = tokio::join!(
            direct,
            self.publish_to(&self.everyone, envelopes, &everyone),
            self.publish_to(&self.functions, envelopes, &functions),
        );
        let mut outcomes: Vec<Result<(), BusError>> = vec![Ok(()); envelopes.len()];
        for (i, outcome) in everyone.iter().zip(to_everyone).chain(functions.iter().zip(to_functions)) {
            if let Err(e) = outcome {
                outcomes[*i] = Err(e);
            }
        }
        // What a route could not take goes through the topic to every
        // gateway: a queue gone (until confirmed dead and left out) or sick
        // loses nothing.
        let mut relay: Vec<usize> = Vec::new();
        for (route, picked, sent) in direct {
            let mut gone = Vec::new();
            for (&i, outcome) in picked.iter().zip(sent) {
                match outcome {
                    Ok(()) => {}
                    Err(SendFailure::Gone) => {
                        gone.push(envelopes[i].conversation_id.clone());
                        relay.push(i);
                    }
                    Err(SendFailure::Failed(detail)) => {
                        tracing::warn!(route, event_id = envelopes[i].event_id, detail, "relaying through the topic");
                        relay.push(i);
                    }
                }
            }
            if !gone.is_empty() {
                gone.sort();
                gone.dedup();
                self.router.check_gone(route, gone);
            }
        }
        relay.sort_unstable();
        relay.dedup();
        relay.retain(|i| !plans[*i].everyone);
        if !relay.is_empty() {
            metrics::counter!("chat_routes_relayed_total").increment(relay.len() as u64);
            let relayed = self.publish_to(&self.everyone, envelopes, &relay).await;
            for (i, outcome) in relay.iter().zip(relayed) {
                if let Err(e) = outcome {
                    outcomes[*i] = Err(e);
                }
            }
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::envelope::{MessageEvent, ReceiptEvent, ReceiptStatus};

    fn routes(gateways: &[&str]) -> Routes {
        Routes { gateways: gateways.iter().map(|g| (*g).to_owned()).collect(), ..Routes::default() }
    }

    fn envelope(event: Event) -> Envelope {
        Envelope::new("e1".into(), "c1".into(), "gw-a".into(), 0, event)
    }

    fn message(seq: u64) -> Envelope {
        envelope(Event::Message(MessageEvent {
            message_id: format!("m{seq}"),
            seq,
            sender: "alice".into(),
            body: "hi".into(),
            client_message_id: String::new(),
            external_recipients: Vec::new(),
        }))
    }

    fn receipt() -> Envelope {
        envelope(Event::Receipt(ReceiptEvent {
            user_id: "bob".into(),
            status: ReceiptStatus::Delivered,
            up_to_seq: 1,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded: false,
        }))
    }

    #[test]
    fn route_ids_name_their_gateway() {
        let route = route_id("gw-01abc", "deadbeef");
        assert_eq!(route, "gw-01abc~deadbeef");
        assert_eq!(route_gateway(&route), "gw-01abc");
        assert_eq!(route_boot(&route), Some("deadbeef"));
        assert_eq!(route_gateway("gw-plain"), "gw-plain");
        assert_eq!(route_boot("gw-plain"), None);
    }

    /// A message goes by routes read at or after its own seq, whatever
    /// their age; older routes might lack a gateway registered since.
    #[test]
    fn a_message_uses_routes_read_at_or_after_its_seq() {
        let mut book = RouteBook::default();
        book.observe("c1", 5, &routes(&["a", "b"]));
        assert_eq!(book.routes_for(&message(5)), Some(&routes(&["a", "b"])));
        assert_eq!(book.routes_for(&message(4)), Some(&routes(&["a", "b"])));
        assert_eq!(book.routes_for(&message(6)), None, "numbered after the routes were read");
        // An older observation never replaces a newer one.
        book.observe("c1", 3, &routes(&["a"]));
        assert_eq!(book.routes_for(&message(5)), Some(&routes(&["a", "b"])));
        book.observe("c1", 7, &routes(&["a", "c"]));
        assert_eq!(book.routes_for(&message(6)), Some(&routes(&["a", "c"])));
    }

    /// A gateway may have registered since any routes were read, and the
    /// event a join races must reach it: everything but a message reads.
    #[test]
    fn every_other_event_reads_the_routes_afresh() {
        let mut book = RouteBook::default();
        book.observe("c1", 1, &routes(&["a"]));
        let presence = envelope(Event::Presence { user_id: "bob".into(), online: true });
        let left = envelope(Event::MemberLeft { user_id: "bob".into() });
        let typing = envelope(Event::Typing { user_id: "bob".into(), typing: true });
        for event in [presence, left, typing, receipt()] {
            assert_eq!(book.routes_for(&event), None, "{event:?}");
        }
    }

    #[test]
    fn a_dead_route_is_forgotten_everywhere() {
        let mut book = RouteBook::default();
        book.observe("c1", 1, &routes(&["a", "dead"]));
        book.forget_route("dead");
        assert_eq!(book.routes_for(&message(1)), Some(&routes(&["a"])));
        book.forget_conversation("c1");
        assert_eq!(book.routes_for(&message(1)), None);
    }

    #[test]
    fn retain_keeps_only_the_conversations_asked_for() {
        let mut book = RouteBook::default();
        book.observe("kept", 1, &routes(&["a"]));
        book.observe("gone", 1, &routes(&["a"]));
        book.retain(|c| c == "kept");
        assert!(book.routes_for(&Envelope { conversation_id: "kept".into(), ..message(1) }).is_some());
        assert!(book.routes_for(&Envelope { conversation_id: "gone".into(), ..message(1) }).is_none());
    }

    #[test]
    fn plans_skip_this_gateway_and_send_functions_only_what_they_read() {
        let linked = |members: &[&str]| Routes {
            fallback_members: members.iter().map(|m| (*m).to_owned()).collect(),
            ..routes(&["me", "other"])
        };
        let two = linked(&["bob"]);
        let p = plan(&message(1), Some(&two), "me");
        assert_eq!(p, Plan { everyone: false, functions: true, routes: vec!["other".into()] });
        // A message no function acts on: nobody to fall back to but its
        // sender, no external recipient.
        for nobody in [linked(&[]), linked(&["alice"])] {
            let p = plan(&message(1), Some(&nobody), "me");
            assert_eq!(p, Plan { everyone: false, functions: false, routes: vec!["other".into()] }, "{nobody:?}");
        }
        let Event::Message(m) = message(1).event else { unreachable!() };
        let external = envelope(Event::Message(MessageEvent { external_recipients: vec!["whatsapp:+1".into()], ..m }));
        assert!(plan(&external, Some(&linked(&[])), "me").functions, "the connector delivers to it");
        let typing = envelope(Event::Typing { user_id: "bob".into(), typing: true });
        let p = plan(&typing, Some(&two), "me");
        assert_eq!(p, Plan { everyone: false, functions: false, routes: vec!["other".into()] });
        assert!(plan(&receipt(), Some(&two), "me").functions, "persist records receipts");
        let Event::Receipt(read) = receipt().event else { unreachable!() };
        let recorded = envelope(Event::Receipt(ReceiptEvent { status: ReceiptStatus::Read, recorded: true, ..read }));
        let p = plan(&recorded, Some(&two), "me");
        assert!(!p.functions && p.routes == ["other"], "a READ its gateway recorded goes to the members only: {p:?}");
        // Unknown routes, or an overflowed conversation: the topic, to all.
        let everyone = Plan { everyone: true, functions: false, routes: Vec::new() };
        assert_eq!(plan(&message(1), None, "me"), everyone);
        let overflowed = Routes { overflowed: true, ..two.clone() };
        assert_eq!(plan(&message(1), Some(&overflowed), "me"), everyone);
        // Past the limit, a receipt stays with the functions and this gateway.
        let p = plan(&receipt(), Some(&overflowed), "me");
        assert_eq!(p, Plan { everyone: false, functions: true, routes: Vec::new() });
        assert_eq!(plan(&receipt(), None, "me"), everyone, "unknown routes: everyone");
        // Only this gateway: nothing to send, the functions still get it.
        let p = plan(&message(1), Some(&Routes { gateways: vec!["me".into()], ..two.clone() }), "me");
        assert_eq!(p, Plan { everyone: false, functions: true, routes: Vec::new() });
    }

    #[test]
    fn send_batches_hold_ten_entries_and_256_kib() {
        assert_eq!(send_batches(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(send_batches(&[100; 25]), vec![0..10, 10..20, 20..25]);
        let big = 100 * 1024;
        assert_eq!(send_batches(&[big, big, big, 10]), vec![0..2, 2..4]);
        // An entry larger than a batch still goes (SQS answers for it).
        assert_eq!(send_batches(&[300 * 1024, 10]), vec![0..1, 1..2]);
    }
}
