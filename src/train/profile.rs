//! `train.profile`: where a training step's time goes, phase by phase (data, forward, backward,
//! all-reduce, gradient norm, optimizer). The device is synchronized at every phase boundary, so a
//! GPU's queued work is charged to the phase that queued it; that costs a little overlap, which is
//! why it is off by default.

use crate::error::Result;
use candle_core::Device;
use std::time::Instant;

pub struct StepProfile {
    device: Option<Device>,
    last: Instant,
    /// Seconds per phase, in the order the phases first ran.
    phases: Vec<(&'static str, f64)>,
    steps: u64,
}

impl StepProfile {
    /// A profile that measures when `enabled`, and otherwise does nothing.
    pub fn new(enabled: bool, device: &Device) -> Self {
        StepProfile {
            device: enabled.then(|| device.clone()),
            last: Instant::now(),
            phases: Vec::new(),
            steps: 0,
        }
    }

    /// Starts a step: what ran before it (validation, checkpoints, logging) is not charged.
    pub fn start(&mut self) -> Result<()> {
        if let Some(d) = &self.device {
            d.synchronize()?;
            self.last = Instant::now();
            self.steps += 1;
        }
        Ok(())
    }

    /// Charges the time since the last mark to `phase`, once the device has finished its work.
    pub fn mark(&mut self, phase: &'static str) -> Result<()> {
        let Some(d) = &self.device else {
            return Ok(());
        };
        d.synchronize()?;
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        match self.phases.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, total)) => *total += dt,
            None => self.phases.push((phase, dt)),
        }
        Ok(())
    }

    /// A table of the phases: milliseconds per step and share of the measured time.
    pub fn report(&self) -> Option<String> {
        if self.device.is_none() || self.steps == 0 {
            return None;
        }
        let total: f64 = self.phases.iter().map(|(_, s)| s).sum();
        let mut out = format!(
            "profile over {} steps ({:.1} ms a step, device synchronized between phases):\n",
            self.steps,
            1e3 * total / self.steps as f64
        );
        for (phase, secs) in &self.phases {
            out.push_str(&format!(
                "  {phase:<12} {:>9.2} ms  {:>5.1}%\n",
                1e3 * secs / self.steps as f64,
                100.0 * secs / total.max(f64::MIN_POSITIVE)
            ));
        }
        Some(out)
    }
}
