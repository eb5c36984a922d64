//! Length-prefixed bincode frames: `u32` little-endian length, then the body.

use serde::{de::DeserializeOwned, Serialize};

use crate::MAX_FRAME;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared length is over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The body does not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] bincode::Error),
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_FRAME as u64)
}

/// Encodes `message` as one frame, appended to `out`.
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    use bincode::Options;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = options().serialize_into(&mut *out, message) {
        // Leave nothing behind: a stray prefix would garble the stream.
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Encodes `message` as one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(message, &mut out)?;
    Ok(out)
}

/// Reads a frame's declared body length from its 4-byte prefix.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body (without its length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    use bincode::Options;
    Ok(options().reject_trailing_bytes().deserialize(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_over_the_limit_leaves_the_buffer_as_it_was() {
        let mut out = vec![1, 2, 3];
        let huge = Request::ModuleLoad {
            device: 0,
            image: serde_bytes::ByteBuf::from(vec![0u8; MAX_FRAME + 1]),
        };
        assert!(encode_into(&huge, &mut out).is_err());
        assert_eq!(out, [1, 2, 3]);
    }
    use crate::api::{LaunchDims, Reply, Request};
    use crate::CuError;

    #[test]
    fn request_round_trips() {
        let request = Request::LaunchKernel {
            function: 7,
            dims: LaunchDims {
                grid: [4, 2, 1],
                block: [128, 1, 1],
                shared_bytes: 64,
            },
            stream: 2,
            params: serde_bytes::ByteBuf::from(vec![1, 2, 3, 4, 5, 6, 7, 8]),
        };
        let frame = encode(&request).unwrap();
        let len = body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: Request = decode(&frame[4..]).unwrap();
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
    }

    #[test]
    fn oversized_prefix_is_refused() {
        assert!(matches!(
            body_len(u32::MAX.to_le_bytes()),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn truncated_and_garbage_bodies_are_errors_not_panics() {
        let frame = encode(&Result::<Reply, CuError>::Ok(Reply::MemAlloc(
            0x2000_0000_0000,
        )))
        .unwrap();
        for cut in 4..frame.len() {
            assert!(decode::<Result<Reply, CuError>>(&frame[4..cut]).is_err());
        }
        // A length field inside the body claiming far more than is there.
        let mut state = 0x1234_5678_u32;
        for _ in 0..2000 {
            let body: Vec<u8> = (0..(state % 64))
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = decode::<Request>(&body);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&Request::Synchronize {}).unwrap();
        frame.push(0);
        assert!(decode::<Request>(&frame[4..]).is_err());
    }
}
