//! Which raffles have a writer, and the channel to each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::writer::Message;

#[derive(Default)]
pub(super) struct Registry {
    /// Each writer has a generation, so a retiring writer never unregisters its successor.
    writers: Mutex<HashMap<Uuid, (u64, mpsc::Sender<Message>)>>,
    generations: AtomicU64,
}

type Writers = HashMap<Uuid, (u64, mpsc::Sender<Message>)>;

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writers> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn get(&self, raffle_id: Uuid) -> Option<mpsc::Sender<Message>> {
        self.lock()
            .get(&raffle_id)
            .map(|(_, sender)| sender.clone())
    }

    pub fn all(&self) -> Vec<mpsc::Sender<Message>> {
        self.lock()
            .values()
            .map(|(_, sender)| sender.clone())
            .collect()
    }

    pub fn get_or_spawn(
        &self,
        raffle_id: Uuid,
        spawn: impl FnOnce(u64) -> mpsc::Sender<Message>,
    ) -> mpsc::Sender<Message> {
        let mut writers = self.lock();
        let (_, sender) = writers.entry(raffle_id).or_insert_with(|| {
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            (generation, spawn(generation))
        });
        sender.clone()
    }

    pub fn remove_if_closed(&self, raffle_id: Uuid) {
        let mut writers = self.lock();
        if writers
            .get(&raffle_id)
            .is_some_and(|(_, sender)| sender.is_closed())
        {
            writers.remove(&raffle_id);
        }
    }

    /// Unregisters a writer that wants to stop, unless commands are waiting for it. Closing
    /// the receiver under the lock means no sender can slip a message in afterwards.
    pub fn retire(
        &self,
        raffle_id: Uuid,
        generation: u64,
        receiver: &mut mpsc::Receiver<Message>,
        force: bool,
    ) -> bool {
        let mut writers = self.lock();
        if !force && !receiver.is_empty() {
            return false;
        }
        if writers
            .get(&raffle_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            writers.remove(&raffle_id);
        }
        receiver.close();
        true
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}
