//! Copies of the aggregate's private storage (`domain/src/chunked.rs`, `orders.rs`), so the
//! benchmark can measure each structure on its own: its memory ([`super::breakdown`]) and its
//! share of the snapshot decode ([`super::decode_profile`]). Keep in step with the domain.

use uuid::Uuid;

/// `ChunkedVec`'s chunk length (`CHUNK_BITS = 16`).
pub const CHUNK_BITS: u32 = 16;
pub const CHUNK_LEN: usize = 1 << CHUNK_BITS;

/// `ChunkedVec<T>`: a first chunk that grows like a `Vec` from 4, then full-size chunks.
pub struct ChunkedVec<T> {
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

    pub fn get(&self, index: usize) -> &T {
        &self.chunks[index >> CHUNK_BITS][index & (CHUNK_LEN - 1)]
    }
}

/// `orders::Order`, field for field (48 bytes).
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // Only its size and `id` matter here.
pub struct Order {
    pub id: Uuid,
    pub numbers_at: u32,
    pub numbers_len: u32,
    pub reserved_at: u32,
    pub expires_at: u32,
    pub issued_at: u32,
    pub buyer: u64,
    pub status: u8,
}

const _: () = assert!(std::mem::size_of::<Order>() == 48);

/// `orders::id_hash`.
pub fn id_hash(id: &Uuid) -> u64 {
    let (hi, lo) = id.as_u64_pair();
    (hi ^ lo.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
