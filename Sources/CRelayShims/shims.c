#include "CRelayShims.h"
