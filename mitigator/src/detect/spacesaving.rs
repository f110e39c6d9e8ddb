//! Weighted Space-Saving (Metwally et al.) with exponential decay: the
//! heaviest keys of a stream in `capacity` counters, whatever the number of
//! distinct keys.
//!
//! Every key whose true weight exceeds `total / capacity` is guaranteed to be
//! held, and each held count overestimates the true weight by at most its
//! `err` (itself at most `total / capacity`). The counters sit in an indexed
//! binary min-heap, so an update costs O(log capacity) even when every
//! sample is a new key (a random-source flood). Decay multiplies every
//! counter by the same factor, which keeps the heap order and the bounds.

use std::{collections::HashMap, hash::Hash};

/// One monitored key.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot<K> {
    pub key: K,
    /// Estimated weight (an overestimate by at most `err`).
    pub count: f64,
    /// Weight the key may have inherited from the key it evicted.
    pub err: f64,
    /// Packets and bytes seen since the key was last admitted (lower bounds;
    /// when `count` itself counts packets or bytes it is used instead).
    pub packets: f64,
    pub bytes: f64,
}

/// What `count` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Primary {
    Packets,
    Bytes,
}

#[derive(Clone, Debug)]
pub struct SpaceSaving<K> {
    capacity: usize,
    primary: Primary,
    heap: Vec<Slot<K>>,
    index: HashMap<K, usize>,
    total: f64,
    total_packets: f64,
    total_bytes: f64,
}

impl<K: Hash + Eq + Clone> SpaceSaving<K> {
    pub fn new(capacity: usize, primary: Primary) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            primary,
            heap: Vec::new(),
            index: HashMap::new(),
            total: 0.0,
            total_packets: 0.0,
            total_bytes: 0.0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys held now (never more than `capacity`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Exact (decayed) total of the primary weight over the whole stream.
    pub fn total(&self) -> f64 {
        self.total
    }

    pub fn total_packets(&self) -> f64 {
        self.total_packets
    }

    pub fn total_bytes(&self) -> f64 {
        self.total_bytes
    }

    /// Adds `packets` packets of `bytes` bytes for `key`.
    pub fn add(&mut self, key: K, packets: f64, bytes: f64) {
        let w = match self.primary {
            Primary::Packets => packets,
            Primary::Bytes => bytes,
        };
        self.total += w;
        self.total_packets += packets;
        self.total_bytes += bytes;
        if let Some(&i) = self.index.get(&key) {
            let s = &mut self.heap[i];
            s.count += w;
            s.packets += packets;
            s.bytes += bytes;
            self.sift_down(i);
            return;
        }
        if self.heap.len() < self.capacity {
            self.heap.push(Slot {
                key: key.clone(),
                count: w,
                err: 0.0,
                packets,
                bytes,
            });
            let i = self.heap.len() - 1;
            self.index.insert(key, i);
            self.sift_up(i);
            return;
        }
        // Evict the smallest; the newcomer inherits its count as error.
        let min = self.heap[0].count;
        let old = std::mem::replace(
            &mut self.heap[0],
            Slot {
                key: key.clone(),
                count: min + w,
                err: min,
                packets,
                bytes,
            },
        );
        self.index.remove(&old.key);
        self.index.insert(key, 0);
        self.sift_down(0);
    }

    /// Multiplies every weight by `factor` (0 < factor ≤ 1), forgetting the
    /// past gradually. Keys whose weight becomes negligible are dropped so
    /// that an old attacker eventually leaves the table altogether.
    pub fn decay(&mut self, factor: f64) {
        if !(factor > 0.0 && factor < 1.0) {
            return;
        }
        self.total *= factor;
        self.total_packets *= factor;
        self.total_bytes *= factor;
        for s in &mut self.heap {
            s.count *= factor;
            s.err *= factor;
            s.packets *= factor;
            s.bytes *= factor;
        }
        // Below a millionth of a sample nothing of the key remains.
        const NEGLIGIBLE: f64 = 1e-6;
        if self.heap.first().is_some_and(|s| s.count < NEGLIGIBLE) {
            self.heap.retain(|s| s.count >= NEGLIGIBLE);
            self.rebuild();
        }
        if self.total < NEGLIGIBLE {
            self.total = 0.0;
            self.total_packets = 0.0;
            self.total_bytes = 0.0;
        }
    }

    /// Adds every key of `other` (merging two summaries; the merged counts
    /// keep overestimating by at most the sum of both errors).
    pub fn merge_from(&mut self, other: &SpaceSaving<K>) {
        for s in &other.heap {
            let (packets, bytes) = self.weights_of(s, other.primary);
            self.add(s.key.clone(), packets, bytes);
        }
        // Weight `other` had seen for keys it no longer holds still counts
        // toward the totals (shares stay shares of everything seen).
        let held_packets: f64 = other
            .heap
            .iter()
            .map(|s| self.weights_of(s, other.primary).0)
            .sum();
        let held_bytes: f64 = other
            .heap
            .iter()
            .map(|s| self.weights_of(s, other.primary).1)
            .sum();
        let extra_packets = (other.total_packets - held_packets).max(0.0);
        let extra_bytes = (other.total_bytes - held_bytes).max(0.0);
        self.total_packets += extra_packets;
        self.total_bytes += extra_bytes;
        self.total += match self.primary {
            Primary::Packets => extra_packets,
            Primary::Bytes => extra_bytes,
        };
    }

    fn weights_of(&self, s: &Slot<K>, primary: Primary) -> (f64, f64) {
        match primary {
            Primary::Packets => (s.count, s.bytes),
            Primary::Bytes => (s.packets, s.count),
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.heap.clear();
        self.index.clear();
        self.total = 0.0;
        self.total_packets = 0.0;
        self.total_bytes = 0.0;
    }

    pub fn get(&self, key: &K) -> Option<&Slot<K>> {
        self.index.get(key).map(|&i| &self.heap[i])
    }

    /// Estimated packets of a held slot: `count` when counting packets.
    pub fn packets_of(&self, s: &Slot<K>) -> f64 {
        match self.primary {
            Primary::Packets => s.count,
            Primary::Bytes => s.packets,
        }
    }

    /// Estimated bytes of a held slot: `count` when counting bytes.
    pub fn bytes_of(&self, s: &Slot<K>) -> f64 {
        match self.primary {
            Primary::Packets => s.bytes,
            Primary::Bytes => s.count,
        }
    }

    /// The `n` heaviest keys, heaviest first.
    pub fn top(&self, n: usize) -> Vec<&Slot<K>> {
        let mut all: Vec<&Slot<K>> = self.heap.iter().collect();
        all.sort_by(|a, b| b.count.total_cmp(&a.count));
        all.truncate(n);
        all
    }

    /// Every held key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot<K>> {
        self.heap.iter()
    }

    fn rebuild(&mut self) {
        self.index.clear();
        for (i, s) in self.heap.iter().enumerate() {
            self.index.insert(s.key.clone(), i);
        }
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        *self.index.get_mut(&self.heap[a].key).expect("indexed") = a;
        *self.index.get_mut(&self.heap[b].key).expect("indexed") = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].count < self.heap[parent].count {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if l < n && self.heap[l].count < self.heap[smallest].count {
                smallest = l;
            }
            if r < n && self.heap[r].count < self.heap[smallest].count {
                smallest = r;
            }
            if smallest == i {
                break;
            }
            self.swap(i, smallest);
            i = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_heap<K: Hash + Eq + Clone + std::fmt::Debug>(ss: &SpaceSaving<K>) {
        for i in 1..ss.heap.len() {
            assert!(ss.heap[(i - 1) / 2].count <= ss.heap[i].count);
        }
        assert_eq!(ss.index.len(), ss.heap.len());
        for (k, &i) in &ss.index {
            assert_eq!(&ss.heap[i].key, k);
        }
    }

    #[test]
    fn exact_while_under_capacity() {
        let mut ss = SpaceSaving::new(8, Primary::Packets);
        for (k, n) in [("a", 5), ("b", 3), ("c", 9)] {
            for _ in 0..n {
                ss.add(k, 1.0, 100.0);
            }
        }
        check_heap(&ss);
        let top: Vec<_> = ss.top(3).iter().map(|s| (s.key, s.count)).collect();
        assert_eq!(top, vec![("c", 9.0), ("a", 5.0), ("b", 3.0)]);
        assert_eq!(ss.total(), 17.0);
        assert_eq!(ss.get(&"a").unwrap().bytes, 500.0);
    }

    #[test]
    fn bounded_and_keeps_the_heavy_keys_with_error_bounds() {
        let mut ss = SpaceSaving::new(16, Primary::Packets);
        let mut rng = crate::detect::TestRng(7);
        let mut truth: HashMap<u32, f64> = HashMap::new();
        for i in 0..50_000u32 {
            let key = if i % 4 == 0 {
                i % 3
            } else {
                1_000 + rng.below(20_000) as u32
            };
            *truth.entry(key).or_default() += 1.0;
            ss.add(key, 1.0, 1.0);
            assert!(ss.len() <= 16);
        }
        check_heap(&ss);
        let total = ss.total();
        for s in ss.iter() {
            let t = truth[&s.key];
            assert!(s.count >= t && s.count - s.err <= t, "{s:?} true {t}");
            assert!(s.err <= total / 16.0 + 1e-9);
        }
        let mut top: Vec<u32> = ss.top(3).iter().map(|s| s.key).collect();
        top.sort();
        assert_eq!(top, vec![0, 1, 2]);
    }

    #[test]
    fn decay_keeps_order_and_drops_stale_keys() {
        let mut ss = SpaceSaving::new(4, Primary::Bytes);
        ss.add(1, 1.0, 1000.0);
        ss.add(2, 1.0, 10.0);
        ss.decay(0.5);
        assert_eq!(ss.get(&1).unwrap().count, 500.0);
        assert_eq!(ss.total_packets(), 1.0);
        check_heap(&ss);
        for _ in 0..40 {
            ss.decay(0.5);
        }
        assert!(ss.is_empty());
        assert_eq!(ss.total(), 0.0);
        ss.add(3, 1.0, 1.0);
        assert_eq!(ss.top(1)[0].key, 3);
    }

    #[test]
    fn merge_adds_counts_and_totals() {
        let mut a = SpaceSaving::new(4, Primary::Packets);
        let mut b = SpaceSaving::new(4, Primary::Packets);
        a.add("x", 3.0, 300.0);
        b.add("x", 2.0, 200.0);
        b.add("y", 1.0, 100.0);
        a.merge_from(&b);
        assert_eq!(a.get(&"x").unwrap().count, 5.0);
        assert_eq!(a.get(&"x").unwrap().bytes, 500.0);
        assert_eq!(a.total(), 6.0);
        assert_eq!(a.total_bytes(), 600.0);
    }
}
