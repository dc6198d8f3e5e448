//! The codec's error type.

use thiserror::Error;

/// Everything that can go wrong while encoding, loading or decoding a coded matrix.
///
/// Messages name the tile and chunk (global indices, see `docs/FORMAT.md` section 2) and, for
/// word-stream errors, the byte offset into the `ecq_words` tensor. The caller (the container)
/// adds the tensor name.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// An argument of [`encode`](super::encode) or an [`EncodeOptions`](super::EncodeOptions)
    /// field is out of range (bits, precision, weights per symbol, sizes, shape).
    #[error("invalid encode argument: {0}")]
    InvalidArgument(String),

    /// `symbols[index]` does not fit in `bits` bits.
    #[error("symbol {value} at index {index} does not fit in {bits} bits")]
    SymbolOutOfRange {
        /// Index into the symbol slice (row-major weight index).
        index: usize,
        /// The offending value.
        value: u8,
        /// Bits per weight.
        bits: u32,
    },

    /// A header field is invalid on its own or disagrees with another field.
    #[error("invalid header field `{field}` = {value}: {reason}")]
    BadHeader {
        /// Name of the header field (as in FORMAT.md section 6).
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A part (`freqs`, `states`, `offsets`, `words`, `crc`, output buffer) has the wrong length
    /// for the header.
    #[error("`{part}` has {actual} elements, the header requires {expected}")]
    SizeMismatch {
        /// Name of the part.
        part: &'static str,
        /// Length implied by the header.
        expected: u64,
        /// Length given.
        actual: u64,
    },

    /// A tile's frequency table is invalid: an entry above `2^precision`, or a sum other than
    /// `2^precision` (which would leave slots without a symbol, i.e. zero-frequency slots).
    #[error("tile {tile}: invalid frequency table: {reason}")]
    BadFrequencyTable {
        /// Tile index.
        tile: usize,
        /// What is wrong.
        reason: String,
    },

    /// An initial lane state lies outside `[2^16, 2^32)`.
    #[error("tile {tile}, chunk {chunk}, lane {lane}: initial state {state:#x} below 2^16")]
    BadInitialState {
        /// Tile index.
        tile: usize,
        /// Chunk index (global).
        chunk: usize,
        /// Lane index `0..32`.
        lane: usize,
        /// The state.
        state: u32,
    },

    /// The chunk offsets are not a non-decreasing sequence from 0 to the number of words.
    #[error("chunk {chunk}: bad word offset {offset}: {reason}")]
    BadOffsets {
        /// Index into `offsets`.
        chunk: usize,
        /// The offending offset.
        offset: u32,
        /// What is wrong.
        reason: &'static str,
    },

    /// The decoder needed a word beyond the end of the chunk's word range.
    #[error(
        "tile {tile}, chunk {chunk}: word stream exhausted at byte offset {byte_offset} \
         (row {row} of the matrix)"
    )]
    StreamOverrun {
        /// Tile index.
        tile: usize,
        /// Chunk index (global).
        chunk: usize,
        /// Byte offset into the `ecq_words` tensor where the missing word would be.
        byte_offset: u64,
        /// Matrix row being decoded.
        row: usize,
    },

    /// A decode slot fell on a symbol of frequency zero. Unreachable for tables accepted by
    /// [`EncodedMatrix::from_parts`](super::EncodedMatrix::from_parts) (their frequencies sum to
    /// exactly `2^precision`, so every slot has a symbol); kept for decoders of unvalidated tables.
    #[error("tile {tile}, chunk {chunk}: slot {slot} has no symbol (zero frequency)")]
    ZeroFrequencySlot {
        /// Tile index.
        tile: usize,
        /// Chunk index (global).
        chunk: usize,
        /// The slot.
        slot: u32,
    },

    /// After the chunk's last step a lane's state is not `2^16`.
    #[error("tile {tile}, chunk {chunk}, lane {lane}: final state {state:#x}, expected 0x10000")]
    BadFinalState {
        /// Tile index.
        tile: usize,
        /// Chunk index (global).
        chunk: usize,
        /// Lane index.
        lane: usize,
        /// The state reached.
        state: u32,
    },

    /// The chunk's word range was not fully consumed.
    #[error(
        "tile {tile}, chunk {chunk}: {unread} words left unread, first at byte offset {byte_offset}"
    )]
    TrailingWords {
        /// Tile index.
        tile: usize,
        /// Chunk index (global).
        chunk: usize,
        /// Number of unread words.
        unread: u64,
        /// Byte offset of the first unread word in the `ecq_words` tensor.
        byte_offset: u64,
    },

    /// A tile's CRC-32C does not match its table, states and words.
    #[error("tile {tile}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// Tile index.
        tile: usize,
        /// Stored checksum.
        stored: u32,
        /// Checksum of the data.
        computed: u32,
    },

    /// The raw low bits of a [`SplitMatrix`](super::SplitMatrix) do not match their stored
    /// CRC-32C.
    #[error("raw low bits: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    LowBitsChecksumMismatch {
        /// Stored checksum.
        stored: u32,
        /// Checksum of the data.
        computed: u32,
    },

    /// The operation is not defined for this matrix (e.g. MLX packing when `cols * bits` is
    /// not a multiple of 32).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),

    /// The output buffer could not be allocated.
    #[error("cannot allocate {bytes} bytes for the decoded matrix")]
    Allocation {
        /// Requested size.
        bytes: u64,
    },
}
