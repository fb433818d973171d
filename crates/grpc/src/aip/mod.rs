//! Helpers for the AIP conventions every List method shares: page sizes, opaque page tokens
//! (AIP-158) and the AIP-160 filter subset Palisade supports; and the fields an Update
//! method's mask names (AIP-134), and etags (AIP-154).

mod etag;
mod filter;
mod paging;
mod update_mask;

pub use etag::{Etag, require_etag};
pub use filter::{Comparison, FilterField, MAX_TERMS, Term, parse_filter};
pub use paging::{
    CreatedCursor, DEFAULT_PAGE_SIZE, EQUALITY, ListQuery, MAX_PAGE_SIZE, decode_page_token,
    encode_page_token, finish_page, page_size,
};
pub use update_mask::{require_read_back, update_paths};
