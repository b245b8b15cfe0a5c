# Declarations of the policy contract on the request path; definitions and the strategy essay
# live in policy.pyx.


cdef class Answer:
    """A response a policy makes instead of letting the request continue."""
    cdef readonly int status
    cdef readonly tuple headers      # ((name, value), ...), str or bytes each
    cdef readonly bytes body
    cdef readonly Py_ssize_t request_id_at  # where the request id goes in `body`, or -1


cdef class ResponseHead:
    """The response phase's view of a response before its head is written: status and fields.
    `parts` is flat: [name, b": ", value, b"\r\n", ...] (names as received, any case)."""
    cdef public int status
    cdef list parts

    cdef bytes get(self, bytes lname)
    cdef int put(self, bytes name, bytes value) except -1       # replace every `name` field
    cdef int append(self, bytes name, bytes value) except -1    # add one more field
    cdef int drop(self, bytes lname) except -1                  # remove every `lname` field
    cdef int move(self, bytes lname, bytes new_name) except -1  # rename, values kept
    # the same without checking the field: for names and values a policy validated when it was
    # built (config) or that come from the parsed request (no CR, LF or NUL can be in them)
    cdef int put_valid(self, bytes name, bytes value) except -1
    cdef int append_valid(self, bytes name, bytes value) except -1


cdef class CorePolicy:
    """One policy instance on the request path. Subclasses override the phases they have and
    set the matching flag in __init__ (`requests`, `responses`, `completes`)."""
    cdef public str name          # the `policies:` key, or "routes.<route>.policies[<i>]"
    cdef public str type_name     # the family's `type`
    cdef public int slot          # this policy's counter slot (Counters.policy_slot)
    cdef public bint requests     # has a request phase
    cdef public bint responses    # has a response phase
    cdef public bint completes    # has a completion phase
    cdef public bint is_async     # the request phase is a coroutine (slow path)
    cdef public double deadline   # seconds an async request phase may take, then 503
    cdef public long long body_limit  # the request phase reads the body, up to this many
                                      # bytes (0: it does not; the route then never buffers)

    cdef object request(self, object req)
    cdef int response(self, object req, ResponseHead head) except -1
    cdef int complete(self, object req) except -1


cdef class PythonPolicy(CorePolicy):
    """The one adapter for policies written in Python: any object with `on_request`,
    `on_response` and/or `on_complete`."""
    cdef readonly object target
    cdef object _on_request
    cdef object _on_response
    cdef object _on_complete


cdef bint same_name(bytes name, bytes lower) noexcept
cdef list header_parts(object pairs)
# flat head parts [name, b": ", value, b"\r\n", ...]: what requests and responses both edit
cdef int check_field(bytes name, bytes value) except -1
cdef bint response_managed(bytes name) noexcept
cdef int check_response_field(bytes name, bytes value) except -1
cdef int check_answer_headers(object pairs) except -1
cdef bytes parts_get(list parts, bytes lname)
cdef bint same_field(bytes a, bytes b) noexcept
cdef list parts_drop(list parts, bytes name)
cdef int parts_append(list parts, bytes name, bytes value) except -1
cdef int parts_add(list parts, bytes name, bytes value) except -1
cdef int parts_move(list parts, bytes lname, bytes new_name) except -1
