//! The dummies of this process as the ramp's [`Group`] (`cport stress`, `cport demo`).

use crate::dummies::{AddError, Clients};
use crate::group::{Added, Finish, Group, SecondFigures};
use crate::map::Probe;

/// The dummies on this process's port, with the counts the report wants of them.
pub(crate) struct InProcess {
    clients: Clients,
    started: u64,
    shed: u64,
    fd_limited_to: Option<usize>,
    fd_warned: bool,
}

impl InProcess {
    pub(crate) fn new(clients: Clients) -> InProcess {
        InProcess {
            fd_limited_to: clients.fd_limited_to(),
            clients,
            started: 0,
            shed: 0,
            fd_warned: false,
        }
    }
}

impl Group for InProcess {
    fn cap(&self) -> usize {
        self.clients.cap()
    }

    fn take_in(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn tracked(&self) -> u64 {
        self.clients.tracked()
    }

    fn live(&self) -> usize {
        self.clients.live()
    }

    fn active(&self) -> usize {
        self.clients.active()
    }

    fn add(&mut self, live: usize) -> Added {
        match self.clients.add(self.started) {
            Ok(()) => {
                self.started += 1;
                Added::Started
            }
            Err(AddError::Full) | Err(AddError::Other(_)) => Added::NotNow,
            Err(AddError::FdLimit(e)) => {
                if !self.fd_warned {
                    self.fd_warned = true;
                    self.fd_limited_to = Some(live);
                    tracing::warn!(
                        "stress: the open-files limit stops the ramp at {live} clients ({e})"
                    );
                }
                Added::AtCap
            }
        }
    }

    fn shed(&mut self) {
        if self.clients.shed() {
            self.shed += 1;
        }
    }

    fn second(&mut self) -> SecondFigures {
        let (packets_in, packets_out) = self.clients.packets();
        SecondFigures {
            hist: self.clients.delays(true),
            packets_in,
            packets_out,
            errors: self.clients.errors(),
        }
    }

    fn probe(&self) -> Probe {
        self.clients.probe()
    }

    fn fd_limited_to(&self) -> Option<usize> {
        self.fd_limited_to
    }

    fn finish(mut self, _: &mut Option<String>) -> Finish {
        let final_clients = self.clients.active();
        let map = self.clients.map();
        let max_player_id = self.clients.max_player_id();
        let client_backend = self.clients.backend().to_string();
        // Stopped first: what the last completions counted is in the report.
        let cpu = self.clients.stop();
        let delay_samples = self.clients.samples();
        let (packets_in, packets_out) = self.clients.packets();
        let errors = self.clients.errors();
        let rest = self.clients.delays(false);
        Finish {
            final_clients,
            clients_started: self.started,
            clients_shed: self.shed,
            delay_samples,
            rest,
            packets_in,
            packets_out,
            errors,
            max_player_id,
            procs: 1,
            children: Vec::new(),
            cpu_s: cpu.as_secs_f64(),
            client_backend,
            map,
        }
    }
}
