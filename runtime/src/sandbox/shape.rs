//! Limits on a component's shape, checked before it is compiled.
//!
//! Validation and compilation cost more than linear time and memory in
//! some dimensions. A component nested 20,000 levels deep (238 KB) once
//! took 7.9 GB and 30 s to refuse, and a core module of a million nested
//! `block`s (3 MB) 893 MB. The run's `--memory` and `--timeout` do not
//! apply before the component is instantiated. [`check`] walks the binary
//! once, in linear time and with memory bounded by the limits: it counts
//! nesting of modules and components, sections, functions, and the control
//! depth of every function body. It refuses the first limit passed, naming
//! it, before wasmtime sees a byte. The limits are far above what compilers
//! emit: the Python and JavaScript hello nodes (40 MB and 12 MB) nest
//! components 2 deep and blocks a few hundred deep.

use wasmparser::{Operator, Parser, Payload};

/// The limits. [`ShapeLimits::default`] is what the sandbox applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// The most bytes.
    pub max_bytes: usize,
    /// The deepest nesting of modules and components (the outermost is 1).
    pub max_nesting: usize,
    /// The most sections, over all nested modules and components.
    pub max_sections: usize,
    /// The most function bodies, over all core modules.
    pub max_functions: usize,
    /// The deepest nesting of `block`, `loop`, `if` and `try` in a body.
    pub max_control_depth: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        ShapeLimits {
            max_bytes: 256 * 1024 * 1024,
            max_nesting: 16,
            max_sections: 100_000,
            max_functions: 1_000_000,
            max_control_depth: 10_000,
        }
    }
}

/// The first limit a component passes, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// A limit was passed.
    #[error("{what} is over the limit of {limit}")]
    OverLimit {
        /// Which dimension, in words.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The binary is malformed where the walk had to read it.
    #[error("malformed at byte {offset}: {message}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What the reader said.
        message: String,
    },
}

impl ShapeError {
    /// The stable detail code under `invalid_bundle`.
    pub fn detail(&self) -> &'static str {
        match self {
            ShapeError::OverLimit { .. } => "component_too_complex",
            ShapeError::Malformed { .. } => "invalid_component",
        }
    }
}

fn malformed(e: wasmparser::BinaryReaderError) -> ShapeError {
    ShapeError::Malformed { offset: e.offset() as usize, message: e.message().to_owned() }
}

/// What the walk found: the largest of each dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// The deepest nesting of modules and components.
    pub nesting: usize,
    /// Sections.
    pub sections: usize,
    /// Function bodies.
    pub functions: usize,
    /// The deepest control nesting in any body.
    pub control_depth: usize,
}

/// Walks `bytes` once and refuses the first limit passed; what it found.
pub fn check(bytes: &[u8], limits: &ShapeLimits) -> Result<Shape, ShapeError> {
    let over = |what, limit| Err(ShapeError::OverLimit { what, limit });
    if bytes.len() > limits.max_bytes {
        return over("the component's size in bytes", limits.max_bytes);
    }
    let mut shape = Shape::default();
    let (mut nesting, mut sections, mut functions) = (0usize, 0usize, 0usize);
    for payload in Parser::new(0).parse_all(bytes) {
        sections += 1;
        if sections > limits.max_sections {
            return over("the number of sections", limits.max_sections);
        }
        match payload.map_err(malformed)? {
            Payload::Version { .. } => {
                nesting += 1;
                if nesting > limits.max_nesting {
                    return over("the nesting of modules and components", limits.max_nesting);
                }
                shape.nesting = shape.nesting.max(nesting);
            }
            Payload::End(_) => nesting = nesting.saturating_sub(1),
            Payload::CodeSectionEntry(body) => {
                functions += 1;
                if functions > limits.max_functions {
                    return over("the number of functions", limits.max_functions);
                }
                let mut operators = body.get_operators_reader().map_err(malformed)?;
                let mut depth = 0usize;
                while !operators.eof() {
                    match operators.read().map_err(malformed)? {
                        Operator::Block { .. }
                        | Operator::Loop { .. }
                        | Operator::If { .. }
                        | Operator::Try { .. }
                        | Operator::TryTable { .. } => {
                            depth += 1;
                            if depth > limits.max_control_depth {
                                return over("the nesting of blocks in a function", limits.max_control_depth);
                            }
                            shape.control_depth = shape.control_depth.max(depth);
                        }
                        Operator::End => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    shape.sections = sections;
    shape.functions = functions;
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }

    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    /// A component nested `depth` levels deep, each wrapping the last in a
    /// component section (built outside in, in linear time).
    fn nested_components(depth: usize) -> Vec<u8> {
        let mut sizes = vec![COMPONENT.len()];
        for _ in 1..depth {
            let inner = *sizes.last().unwrap();
            let mut prefix = vec![4];
            leb(inner, &mut prefix);
            sizes.push(COMPONENT.len() + prefix.len() + inner);
        }
        let mut bytes = Vec::with_capacity(*sizes.last().unwrap());
        for inner in sizes.iter().rev().skip(1) {
            bytes.extend_from_slice(COMPONENT);
            bytes.push(4);
            leb(*inner, &mut bytes);
        }
        bytes.extend_from_slice(COMPONENT);
        bytes
    }

    /// A core module with one function of `depth` nested blocks.
    fn nested_blocks(depth: usize) -> Vec<u8> {
        let text = format!("(module (func {} {}))", "block ".repeat(depth), "end ".repeat(depth));
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn nesting_past_the_limit_is_refused_before_compilation_in_linear_time() {
        let limits = ShapeLimits::default();
        assert_eq!(check(&nested_components(16), &limits).map(|s| s.nesting), Ok(16));
        let deep = nested_components(20_000);
        let started = std::time::Instant::now();
        assert!(matches!(check(&deep, &limits), Err(e) if e.detail() == "component_too_complex"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        assert_eq!(check(&nested_blocks(10_000), &limits).map(|s| s.control_depth), Ok(10_000));
        let refused = check(&nested_blocks(10_001), &limits).unwrap_err();
        assert!(matches!(refused, ShapeError::OverLimit { limit: 10_000, .. }), "{refused}");
    }

    #[test]
    fn each_limit_is_its_own() {
        let tight = ShapeLimits { max_bytes: 8, ..ShapeLimits::default() };
        assert!(matches!(check(&nested_blocks(1), &tight), Err(ShapeError::OverLimit { limit: 8, .. })));
        let tight = ShapeLimits { max_sections: 3, ..ShapeLimits::default() };
        assert!(matches!(check(&nested_components(3), &tight), Err(ShapeError::OverLimit { limit: 3, .. })));
        let many = wat::parse_str(format!("(module {})", "(func)".repeat(20))).unwrap();
        let tight = ShapeLimits { max_functions: 10, ..ShapeLimits::default() };
        assert!(matches!(check(&many, &tight), Err(ShapeError::OverLimit { limit: 10, .. })));
        assert!(matches!(check(b"\0asm\x01\0\0\0\x7f", &ShapeLimits::default()), Err(ShapeError::Malformed { .. })));
    }
}
