//! WebSocket frame header codec and masking.
