"""Prepares a new NSS softoken database for the tests: sets its user PIN
(C_Login as SO with the empty PIN, C_InitPIN) through the module itself,
with ctypes: libnss3-tools (certutil, modutil) is not needed.

nss_init(module, dbdir, pin) -> (init_args, token label)
"""
import ctypes
import os

CKF_OS_LOCKING_OK = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_RW_SESSION = 0x2
CKU_SO = 0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
ULONG = ctypes.c_ulong
# Indexes into CK_FUNCTION_LIST after its CK_VERSION (PKCS#11 2.x order).
F = {"C_Initialize": 0, "C_Finalize": 1, "C_GetSlotList": 4,
     "C_GetTokenInfo": 6, "C_InitPIN": 10, "C_OpenSession": 12,
     "C_CloseSession": 13, "C_Login": 18, "C_Logout": 19}


class InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p),
                ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p),
                ("UnlockMutex", ctypes.c_void_p),
                ("flags", ULONG), ("pReserved", ctypes.c_char_p)]


def init_args(dbdir):
    return ("configdir='sql:%s' certPrefix='' keyPrefix='' "
            "secmod='secmod.db' flags=" % dbdir)


def nss_init(module, dbdir, pin):
    """Returns (init_args, label of the key token). Raises on failure."""
    os.makedirs(dbdir, exist_ok=True)
    lib = ctypes.CDLL(module, mode=os.RTLD_LOCAL | os.RTLD_NOW)
    fl = ctypes.c_void_p()
    rv = lib.C_GetFunctionList(ctypes.byref(fl))
    assert rv == 0, rv
    table = ctypes.cast(fl.value + 8, ctypes.POINTER(ctypes.c_void_p))

    def fn(name, *argtypes):
        return ctypes.CFUNCTYPE(ULONG, *argtypes)(table[F[name]])

    args = init_args(dbdir)
    ia = InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, args.encode())
    rv = fn("C_Initialize", ctypes.c_void_p)(ctypes.addressof(ia))
    assert rv == 0, "C_Initialize: 0x%x" % rv
    try:
        n = ULONG(16)
        slots = (ULONG * 16)()
        rv = fn("C_GetSlotList", ctypes.c_ubyte, ctypes.c_void_p,
                ctypes.c_void_p)(1, slots, ctypes.byref(n))
        assert rv == 0, "C_GetSlotList: 0x%x" % rv
        info = ctypes.create_string_buffer(512)
        for i in range(n.value):
            rv = fn("C_GetTokenInfo", ULONG, ctypes.c_void_p)(slots[i], info)
            assert rv == 0, rv
            label = info.raw[:32].decode().rstrip(" \0")
            # The key token (slot 2): flags say login is required.
            if label == "NSS Generic Crypto Services":
                continue
            sess = ULONG()
            rv = fn("C_OpenSession", ULONG, ULONG, ctypes.c_void_p,
                    ctypes.c_void_p, ctypes.c_void_p)(
                slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, None, None,
                ctypes.byref(sess))
            assert rv == 0, "C_OpenSession: 0x%x" % rv
            rv = fn("C_Login", ULONG, ULONG, ctypes.c_char_p, ULONG)(
                sess, CKU_SO, b"", 0)
            assert rv == 0, "C_Login(SO): 0x%x" % rv
            p = pin.encode()
            rv = fn("C_InitPIN", ULONG, ctypes.c_char_p, ULONG)(sess, p,
                                                                 len(p))
            assert rv == 0, "C_InitPIN: 0x%x" % rv
            fn("C_Logout", ULONG)(sess)
            fn("C_CloseSession", ULONG)(sess)
            return args, label
        raise AssertionError("no NSS key token")
    finally:
        fn("C_Finalize", ctypes.c_void_p)(None)
