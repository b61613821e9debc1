//! Phases as named tests: the integration tests run with `harness = false` under
//! libtest-mimic, and each phase of a scenario is a trial of its own, so the first
//! failure no longer hides the phases after it.
//!
//! A *group* is a fixture (usually a lab) made on first use and shared by its phases,
//! which run in the order they were declared, one at a time; the fixture is dropped
//! (the lab torn down) when the group's last phase has finished, pass or fail. A phase
//! that needs an earlier one (`phase_after`) fails with the reason when that one failed,
//! and is ignored with the reason when that one was filtered out. A fixture that cannot
//! be made fails every phase of its group with the fixture's own message.
//!
//! Concurrency is libtest's: at most `--test-threads` groups (default: one per CPU) are
//! active at once, as the `#[test]` functions each group replaces ran before. Every trial
//! gets its own thread so that a phase waiting for its predecessor never holds a slot
//! another group needs.
//!
//! Heads up: libtest-mimic does not capture output; what a phase prints appears at once.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The opt-out for machines without root or namespaces; the trials that need them are
/// then reported as ignored and the run prints "skipped".
fn skip_requested() -> bool {
    std::env::var("UCANAL_SKIP_NETNS").is_ok_and(|v| v == "1")
}

thread_local! {
    /// Where the last panic on this thread happened, for the failure message.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The trials of one test file.
pub struct Suite {
    trials: Vec<Trial>,
    slots: Arc<Slots>,
    netns_trials: usize,
    /// Trials (groups) run one at a time whatever --test-threads says.
    one_at_a_time: bool,
}

impl Default for Suite {
    fn default() -> Self {
        Self::new()
    }
}

impl Suite {
    pub fn new() -> Suite {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANIC_AT.with(|p| *p.borrow_mut() = info.location().map(|l| l.to_string()));
            default_hook(info);
        }));
        Suite { trials: Vec::new(), slots: Arc::new(Slots::default()), netns_trials: 0, one_at_a_time: false }
    }

    /// Runs the groups one at a time: for files whose trials load the machine or time what
    /// another trial does (a bulk transfer beside a walk that compares live traces).
    pub fn one_at_a_time(&mut self) {
        self.one_at_a_time = true;
    }

    /// A trial on its own that needs neither root nor a namespace.
    pub fn test(&mut self, name: &str, body: impl FnOnce() + Send + 'static) {
        let slots = self.slots.clone();
        self.trials.push(Trial::test(name, move || {
            let _slot = slots.acquire();
            run_body(body)
        }));
    }

    /// A trial on its own that needs root, network namespaces and `tools`.
    pub fn netns_test(&mut self, name: &str, tools: &[&'static str], body: impl FnOnce() + Send + 'static) {
        self.group(name, tools, || ()).phase_named(name.to_string(), &[], move |_: &()| body());
    }

    /// A group whose fixture `setup` makes on first use (after checking root and `tools`);
    /// its trials are named `name::phase`.
    pub fn group<F: Send + Sync + 'static>(
        &mut self,
        name: &str,
        tools: &[&'static str],
        setup: impl FnOnce() -> F + Send + 'static,
    ) -> Group<'_, F> {
        let tools = tools.to_vec();
        let setup = Box::new(move || {
            // UCANAL_SKIP_NETNS=1 never gets here (the phases are ignored before any setup).
            assert!(super::require_netns(&tools), "no root or namespaces, and no opt-out");
            setup()
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(GroupState { phases: Vec::new(), fixture: Fixture::Unmade(Some(setup)), slot: None }),
            changed: Condvar::new(),
        });
        Group { suite: self, name: name.to_string(), shared, names: Vec::new() }
    }

    /// Runs the trials the command line selects; the exit code is libtest's.
    pub fn run(self) -> ExitCode {
        let mut args = Arguments::from_args();
        let parallel = if self.one_at_a_time {
            Some(1)
        } else {
            args.test_threads.or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        };
        self.slots.set_capacity(parallel.unwrap_or(1).max(1));
        // A thread per trial; `slots` keeps the number of active groups at --test-threads.
        args.test_threads = Some(self.trials.len().max(1));
        if skip_requested() && self.netns_trials > 0 && !args.list {
            println!("skipped: UCANAL_SKIP_NETNS=1 ({} trials need root and network namespaces)", self.netns_trials);
        }
        libtest_mimic::run(&args, self.trials).exit_code()
    }
}

/// A group under construction: `phase` and `phase_after` add its trials in order.
pub struct Group<'s, F> {
    suite: &'s mut Suite,
    name: String,
    shared: Arc<Shared<F>>,
    names: Vec<String>,
}

impl<F: Send + Sync + 'static> Group<'_, F> {
    /// A phase that needs only the fixture.
    pub fn phase(self, name: &str, body: impl FnOnce(&F) + Send + 'static) -> Self {
        self.phase_after(name, &[], body)
    }

    /// A phase that runs only if the phases named in `needs` (declared earlier) passed.
    pub fn phase_after(self, name: &str, needs: &[&str], body: impl FnOnce(&F) + Send + 'static) -> Self {
        let full = format!("{}::{name}", self.name);
        self.phase_named(full, needs, body)
    }

    fn phase_named(mut self, full: String, needs: &[&str], body: impl FnOnce(&F) + Send + 'static) -> Self {
        let needs: Vec<(usize, String)> = needs
            .iter()
            .map(|n| {
                let i = self.names.iter().position(|x| x == n);
                (i.unwrap_or_else(|| panic!("{full} needs `{n}`, which is not an earlier phase")), n.to_string())
            })
            .collect();
        let index = self.names.len();
        self.names.push(full.rsplit("::").next().unwrap_or(&full).to_string());
        self.shared.lock().phases.push(Phase::Waiting);
        let ticket = Ticket { shared: self.shared.clone(), index, ran: false };
        let slots = self.suite.slots.clone();
        self.suite.netns_trials += 1;
        self.suite.trials.push(Trial::ignorable_test(full, move || ticket.run(&slots, &needs, body)));
        self
    }
}

/// What a phase's trial holds: running it, or dropping it unrun (filtered out), moves
/// the group on.
struct Ticket<F> {
    shared: Arc<Shared<F>>,
    index: usize,
    ran: bool,
}

impl<F: Send + Sync + 'static> Ticket<F> {
    fn run(
        mut self,
        slots: &Arc<Slots>,
        needs: &[(usize, String)],
        body: impl FnOnce(&F),
    ) -> Result<Completion, Failed> {
        self.ran = true;
        if skip_requested() {
            self.shared.finish(self.index, Phase::NotRun);
            return Ok(Completion::ignored_with("skipped: UCANAL_SKIP_NETNS=1"));
        }
        let fixture = match self.prepare(slots, needs) {
            Ok(f) => f,
            Err(Outcome::Ignore(why)) => {
                println!("{why}");
                self.shared.finish(self.index, Phase::NotRun);
                return Ok(Completion::ignored_with(why));
            }
            Err(Outcome::Fail(why)) => {
                self.shared.finish(self.index, Phase::Failed);
                return Err(why.into());
            }
        };
        let result = run_body(|| body(&fixture));
        drop(fixture);
        self.shared.finish(self.index, if result.is_ok() { Phase::Passed } else { Phase::Failed });
        result.map(|()| Completion::Completed)
    }

    /// Waits for the earlier phases, checks what this one needs, makes the fixture if no
    /// phase did yet.
    fn prepare(&self, slots: &Arc<Slots>, needs: &[(usize, String)]) -> Result<Arc<F>, Outcome> {
        let shared = &self.shared;
        let mut st = shared.wait(|st| st.phases[..self.index].iter().all(|p| *p != Phase::Waiting));
        if st.slot.is_none() {
            drop(st);
            let slot = slots.acquire();
            st = shared.lock();
            st.slot = Some(slot);
        }
        for (i, name) in needs {
            match st.phases[*i] {
                Phase::Passed => {}
                Phase::Failed => return Err(Outcome::Fail(format!("not run: needs `{name}`, which failed"))),
                _ => return Err(Outcome::Ignore(format!("not run: needs `{name}`, which did not run"))),
            }
        }
        match &mut st.fixture {
            Fixture::Ready(f) => Ok(f.clone()),
            Fixture::Broken(why) => Err(Outcome::Fail(format!("the group's fixture failed: {why}"))),
            Fixture::Gone => Err(Outcome::Fail("the group's fixture is gone".into())),
            Fixture::Unmade(setup) => {
                let setup = setup.take().expect("one phase at a time makes the fixture");
                drop(st);
                let made = catch_unwind(AssertUnwindSafe(setup));
                let mut st = shared.lock();
                match made {
                    Ok(f) => {
                        let f = Arc::new(f);
                        st.fixture = Fixture::Ready(f.clone());
                        Ok(f)
                    }
                    Err(p) => {
                        let why = panic_message(&*p);
                        st.fixture = Fixture::Broken(why.clone());
                        Err(Outcome::Fail(format!("the group's fixture failed: {why}")))
                    }
                }
            }
        }
    }
}

impl<F> Drop for Ticket<F> {
    fn drop(&mut self) {
        if !self.ran {
            self.shared.finish(self.index, Phase::NotRun);
        }
    }
}

enum Outcome {
    Fail(String),
    Ignore(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Waiting,
    Passed,
    Failed,
    NotRun,
}

enum Fixture<F> {
    Unmade(Option<Box<dyn FnOnce() -> F + Send>>),
    Ready(Arc<F>),
    Broken(String),
    Gone,
}

struct GroupState<F> {
    phases: Vec<Phase>,
    fixture: Fixture<F>,
    slot: Option<SlotGuard>,
}

struct Shared<F> {
    state: Mutex<GroupState<F>>,
    changed: Condvar,
}

impl<F> Shared<F> {
    fn lock(&self) -> MutexGuard<'_, GroupState<F>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self, ready: impl Fn(&GroupState<F>) -> bool) -> MutexGuard<'_, GroupState<F>> {
        let mut st = self.lock();
        while !ready(&st) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// Records a phase's end; after the last one the fixture is dropped (outside the
    /// lock: a lab's teardown takes seconds) and the group's slot is given back.
    fn finish(&self, index: usize, how: Phase) {
        let (fixture, slot) = {
            let mut st = self.lock();
            st.phases[index] = how;
            if st.phases.contains(&Phase::Waiting) {
                (None, None)
            } else {
                let f = std::mem::replace(&mut st.fixture, Fixture::Gone);
                (Some(f), st.slot.take())
            }
        };
        self.changed.notify_all();
        drop(fixture);
        drop(slot);
    }
}

/// Runs a phase's body; a panic becomes the failure's message, with its place.
fn run_body(body: impl FnOnce()) -> Result<(), Failed> {
    PANIC_AT.with(|p| p.borrow_mut().take());
    catch_unwind(AssertUnwindSafe(body)).map_err(|p| {
        let at = PANIC_AT.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "?".into());
        format!("panicked at {at}: {}", panic_message(&*p)).into()
    })
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// A counting semaphore: how many groups may be active at once.
#[derive(Default)]
struct Slots {
    free: Mutex<Option<usize>>,
    changed: Condvar,
}

struct SlotGuard(Arc<Slots>);

impl Slots {
    fn set_capacity(&self, n: usize) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
    }

    fn acquire(self: &Arc<Self>) -> SlotGuard {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while free.is_some_and(|n| n == 0) {
            free = self.changed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(n) = free.as_mut() {
            *n -= 1;
        }
        SlotGuard(self.clone())
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(n) = self.0.free.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            *n += 1;
        }
        self.0.changed.notify_one();
    }
}
