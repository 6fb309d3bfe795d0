//! A Prometheus metric family written in the order of its label sets (pure, in memory).
//!
//! prometheus-client's `Family` keeps its label sets in a `HashMap`, whose order changes
//! from one process to the next, so two scrapes of the same state could differ in text.
//! [`SortedFamily`] keeps them in a `BTreeMap` instead: every `/metrics` answer lists them
//! in one order, and tests can compare whole scrapes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A metric per label set, encoded in the label sets' order. Cheap to clone: clones share
/// their metrics.
#[derive(Debug)]
pub struct SortedFamily<L, M> {
    metrics: Arc<Mutex<BTreeMap<L, M>>>,
    make: fn() -> M,
}

impl<L, M> Clone for SortedFamily<L, M> {
    fn clone(&self) -> Self {
        Self {
            metrics: self.metrics.clone(),
            make: self.make,
        }
    }
}

impl<L: Ord + Clone, M: Clone + Default> Default for SortedFamily<L, M> {
    fn default() -> Self {
        Self::new(M::default)
    }
}

impl<L: Ord + Clone, M: Clone> SortedFamily<L, M> {
    /// An empty family whose metrics `make` creates on first use.
    pub fn new(make: fn() -> M) -> Self {
        Self {
            metrics: Arc::new(Mutex::new(BTreeMap::new())),
            make,
        }
    }

    /// Drops every label set (for a family recomputed whole at each scrape, whose label
    /// sets come and go).
    pub fn clear(&self) {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The metric of `labels` (a handle sharing its value), created on first use.
    pub fn get_or_create(&self, labels: &L) -> M {
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(metric) = metrics.get(labels) {
            return metric.clone();
        }
        metrics
            .entry(labels.clone())
            .or_insert_with(self.make)
            .clone()
    }
}

impl<L, M: TypedMetric> TypedMetric for SortedFamily<L, M> {
    const TYPE: MetricType = M::TYPE;
}

impl<L, M> EncodeMetric for SortedFamily<L, M>
where
    L: Ord + EncodeLabelSet + std::fmt::Debug,
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, metric) in metrics.iter() {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
    struct Labels {
        name: String,
    }

    fn scrape(names: &[&str]) -> String {
        let family = SortedFamily::<Labels, Counter>::default();
        for name in names {
            family
                .get_or_create(&Labels {
                    name: (*name).to_owned(),
                })
                .inc();
        }
        let mut registry = Registry::default();
        registry.register("things", "Things", family);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn label_sets_are_written_in_order_whatever_the_order_of_first_use() {
        let names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        let forward: Vec<&str> = names.iter().map(String::as_str).collect();
        let backward: Vec<&str> = forward.iter().rev().copied().collect();
        let text = scrape(&forward);
        assert_eq!(text, scrape(&backward));
        let first = text.find("name=\"n00\"").unwrap();
        let last = text.find("name=\"n39\"").unwrap();
        assert!(first < last, "{text}");
    }

    #[test]
    fn a_handle_shares_its_value_with_the_family() {
        let family = SortedFamily::<Labels, Counter>::default();
        let labels = Labels { name: "a".into() };
        family.get_or_create(&labels).inc();
        family.get_or_create(&labels).inc();
        assert_eq!(family.get_or_create(&labels).get(), 2);
    }
}
