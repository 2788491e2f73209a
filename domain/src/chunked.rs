//! An append-only vector stored in fixed-size chunks.
//!
//! A plain `Vec` doubles its capacity, so a 10M-ticket raffle could carry up to 2× the memory
//! it needs right after a growth step. Here the first chunk grows like a `Vec` (small raffles
//! stay small) and every later chunk is allocated once at full size, so the slack is at most
//! one chunk.

const CHUNK_BITS: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK_LEN => last.push(value),
            _ => {
                let capacity = if self.chunks.is_empty() { 4 } else { CHUNK_LEN };
                let mut chunk = Vec::with_capacity(capacity);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    #[inline]
    pub fn get(&self, index: usize) -> &T {
        &self.chunks[index >> CHUNK_BITS][index & (CHUNK_LEN - 1)]
    }

    pub fn get_mut(&mut self, index: usize) -> &mut T {
        &mut self.chunks[index >> CHUNK_BITS][index & (CHUNK_LEN - 1)]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_across_chunk_boundaries() {
        let mut v = ChunkedVec::default();
        for i in 0..(CHUNK_LEN * 2 + 10) {
            v.push(i as u32);
        }
        assert_eq!(v.len(), CHUNK_LEN * 2 + 10);
        for i in [0, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN * 2 + 9] {
            assert_eq!(*v.get(i), i as u32);
        }
        assert!(v.iter().copied().eq(0..(CHUNK_LEN as u32 * 2 + 10)));
    }
}
