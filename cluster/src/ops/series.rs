//! Series read at scrape time: a target (`ops::Target`)'s counters written through prometheus-client's
//! encoder (so the names, HELP and TYPE lines and the text format are the crate's).

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Where a target (`ops::Target`) writes its series. Names are given without the `cport_` prefix (the
/// registry adds it) and counters without `_total` (the encoder adds it).
pub struct Series<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
}

impl fmt::Debug for Series<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Series").finish_non_exhaustive()
    }
}

impl<'a, 'e> Series<'a, 'e> {
    /// A writer onto `enc` (a scrape's encoder).
    pub(super) fn new(enc: &'a mut DescriptorEncoder<'e>) -> Series<'a, 'e> {
        Series { enc }
    }

    /// One gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        let g = ConstGauge::new(value);
        let m = self
            .enc
            .encode_descriptor(name, help, None, g.metric_type())?;
        g.encode(m)
    }

    /// One counter (`<name>_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let c = ConstCounter::new(value);
        let m = self
            .enc
            .encode_descriptor(name, help, None, c.metric_type())?;
        c.encode(m)
    }

    /// A gauge per value of the label `key`.
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        key: &str,
        values: &[(&str, f64)],
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (v, x) in values {
            let labels = [(key, *v)];
            ConstGauge::new(*x).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A counter per value of the label `key`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        key: &str,
        values: &[(&str, u64)],
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (v, x) in values {
            let labels = [(key, *v)];
            ConstCounter::new(*x).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
