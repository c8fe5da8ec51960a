//! Where the time of a model step goes: events recorded on the stream between named groups of
//! launches, summed per name. Opt-in (`GpuModel::enable_profile`), for `gdn bench train
//! --breakdown`; the events serialise nothing, but reading them waits for the step.

use super::Gpu;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use std::cell::RefCell;

#[derive(Default)]
struct Marks {
    /// Reused across steps; grown on demand.
    events: Vec<CudaEvent>,
    /// Name of the interval ending at events[i + 1].
    names: Vec<&'static str>,
    used: usize,
}

/// Named intervals of one step (shared borrows can mark: the model's forward and backward hold
/// mutable borrows of its other fields while they run).
#[derive(Default)]
pub struct OpProfile {
    marks: RefCell<Marks>,
}

impl OpProfile {
    fn record(&self, gpu: &Gpu, name: Option<&'static str>) -> Result<()> {
        let mut m = self.marks.borrow_mut();
        if m.used == m.events.len() {
            let e = gpu
                .ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .context("creating a profiling event")?;
            m.events.push(e);
        }
        let i = m.used;
        m.events[i]
            .record(&gpu.stream)
            .context("recording a profiling event")?;
        m.used += 1;
        if let Some(n) = name {
            m.names.push(n);
        }
        Ok(())
    }

    /// Starts a new step (forgets the marks of the last one).
    pub fn start(&self, gpu: &Gpu) -> Result<()> {
        {
            let mut m = self.marks.borrow_mut();
            m.used = 0;
            m.names.clear();
        }
        self.record(gpu, None)
    }

    /// Ends the interval `name` (begun at the previous mark or the start) here.
    pub fn mark(&self, gpu: &Gpu, name: &'static str) -> Result<()> {
        if self.marks.borrow().used == 0 {
            return Ok(());
        }
        self.record(gpu, Some(name))
    }

    /// Milliseconds per name since the start, in order of first appearance (waits for the last
    /// event).
    pub fn totals(&self) -> Result<Vec<(&'static str, f64)>> {
        let m = self.marks.borrow();
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        if m.used < 2 {
            return Ok(out);
        }
        m.events[m.used - 1]
            .synchronize()
            .context("waiting for the profiling events")?;
        for (i, name) in m.names.iter().enumerate() {
            let ms = m.events[i]
                .elapsed_ms(&m.events[i + 1])
                .context("reading a profiling event")? as f64;
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += ms,
                None => out.push((name, ms)),
            }
        }
        Ok(out)
    }
}

/// Marks `name` on `p` when profiling.
pub fn mark(p: Option<&OpProfile>, gpu: &Gpu, name: &'static str) -> Result<()> {
    match p {
        Some(p) => p.mark(gpu, name),
        None => Ok(()),
    }
}
