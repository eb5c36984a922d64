//! A vendor's runtime library loaded with `libloading` (the cuda backend's
//! `libcuda.so.1`, the hip backend's `libamdhip64`): loaded once and never
//! unloaded, every entry point the backend calls resolved at start by its exported
//! name into one table of typed pointers ([`entry_points!`]).

use anyhow::{Context as _, Result};

/// Declares a table of entry points, `$table`, whose functions return `$ret`:
/// `required` ones are plain function pointers (the load fails without them),
/// `optional` ones (newer than the oldest library accepted) `Option`s, and `other`
/// required ones return what they say. `$table::resolve` looks them up.
macro_rules! entry_points {
    (
        $(#[$meta:meta])*
        pub(crate) struct $table:ident -> $ret:ty;
        required { $($name:ident: fn($($arg:ty),* $(,)?);)* }
        optional { $($opt:ident: fn($($oarg:ty),* $(,)?);)* }
        other { $($other:ident: fn($($xarg:ty),* $(,)?) -> $xret:ty;)* }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub(crate) struct $table {
            $( pub(crate) $name: unsafe extern "C" fn($($arg),*) -> $ret, )*
            $( pub(crate) $opt: Option<unsafe extern "C" fn($($oarg),*) -> $ret>, )*
            $( pub(crate) $other: unsafe extern "C" fn($($xarg),*) -> $xret, )*
        }

        impl $table {
            fn resolve(lib: &'static libloading::Library) -> anyhow::Result<Self> {
                use anyhow::Context as _;
                use $crate::dynlib::symbol;
                Ok(Self {
                    $( $name: symbol(lib, stringify!($name))?
                        .with_context(|| format!("it has no {}", stringify!($name)))?, )*
                    $( $opt: symbol(lib, stringify!($opt))?, )*
                    $( $other: symbol(lib, stringify!($other))?
                        .with_context(|| format!("it has no {}", stringify!($other)))?, )*
                })
            }
        }
    };
}
pub(crate) use entry_points;

/// Looks up one symbol as a function pointer of type `T` (`None`: not exported).
pub(crate) fn symbol<T: Copy>(lib: &'static libloading::Library, name: &str) -> Result<Option<T>> {
    let mut c_name = name.as_bytes().to_vec();
    c_name.push(0);
    // SAFETY: `T` is the C signature the vendor's header declares for `name` (the
    // tables are written from them); the library stays loaded for the life of
    // the process ([`load`]).
    match unsafe { lib.get::<T>(&c_name) } {
        Ok(sym) => Ok(Some(*sym)),
        Err(libloading::Error::DlSym { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {name}")),
    }
}

/// Loads the library at `path` for good; `hint` says what to check if it cannot be.
pub(crate) fn load(path: &std::ffi::OsStr, hint: &str) -> Result<&'static libloading::Library> {
    // SAFETY: loading a vendor runtime runs its initialisers, which is what loading
    // it is for. The handle is leaked: the runtimes (and xpupool's stand-ins) start
    // threads and register exit handlers, so they must never be unloaded.
    let lib = unsafe { libloading::Library::new(path) }
        .with_context(|| format!("could not load {} ({hint})", path.to_string_lossy()))?;
    Ok(Box::leak(Box::new(lib)))
}
