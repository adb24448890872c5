//! A tiny built-in 5x7 bitmap font: the digits and the few letters the overlay needs, so the
//! pictures depend on no system font.

/// Rows top to bottom, the 5 low bits of each row left to right (bit 4 = leftmost).
fn glyph(c: char) -> Option<[u8; 7]> {
    Some(match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'D' => [30, 17, 17, 17, 17, 17, 30],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'z' => [0, 0, 31, 2, 4, 8, 31],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '#' => [10, 10, 31, 10, 31, 10, 10],
        '?' => [14, 17, 1, 2, 4, 0, 4],
        ' ' => [0; 7],
        _ => return None,
    })
}

pub const GLYPH_W: usize = 5;

/// Width in pixels of `text` drawn at `scale` (one blank column between glyphs).
pub fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    if n == 0 {
        0
    } else {
        (n * (GLYPH_W + 1) - 1) * scale
    }
}

/// Calls `put(x, y)` for every lit pixel of `text` with its top-left corner at (x0, y0).
/// Characters the font lacks draw as '?', so a missing glyph shows rather than vanishes.
pub fn draw_text(text: &str, x0: i64, y0: i64, scale: usize, mut put: impl FnMut(i64, i64)) {
    let s = scale as i64;
    for (k, c) in text.chars().enumerate() {
        let g = glyph(c).or_else(|| glyph('?')).unwrap_or([0; 7]);
        let gx = x0 + (k * (GLYPH_W + 1)) as i64 * s;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(gx + col as i64 * s + dx, y0 + row as i64 * s + dy);
                        }
                    }
                }
            }
        }
    }
}
